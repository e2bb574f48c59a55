-- Run once by the postgres image's entrypoint, when the `pgdata` volume is first initialised
-- (files in /docker-entrypoint-initdb.d), as POSTGRES_USER (`cctune`, who then owns it).
-- The Prefect database `prefect` is created by POSTGRES_DB; this adds the MLflow one.
-- An already-initialised volume never reruns it: there, run this statement by hand
--   docker compose -f docker/compose.yaml --env-file docker/.env exec postgres psql -U cctune -d prefect -c 'CREATE DATABASE mlflow;'
CREATE DATABASE mlflow;
