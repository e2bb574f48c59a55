"""Per-language prompt templates for the Hugging Face hub loader; a language without one falls back to English.

Usage: ``hub_template("XNLI", "ar").format(premise=..., hypothesis=...)`` (placeholders as in ``HUB_TEMPLATES``).
"""

from __future__ import annotations

# benchmark -> language -> template. Every language's template has exactly the placeholders
# of the English one (which equals ``cc_core.data.benchmarks.HUB_TEMPLATES``) and keeps the
# option markers "(1) " / "(A) " in ASCII, so ``cc_core.metrics.parse_options`` finds them.
# The wording follows the bundled fixture (cc_core/data/bundled/benchmarks/) where it has the language.
TEMPLATES: dict[str, dict[str, str]] = {
    "XNLI": {
        "en": ("Premise: {premise}\nHypothesis: {hypothesis}\n\nWhat do you think is the relationship between "
               "the premise and the hypothesis?\n\n(1) Entail \n(2) Neutral\n(3) Contradict\n\n"
               "If you have to choose one of these options, your answer would be:"),
        "ar": ("المقدمة: {premise}\nالفرضية: {hypothesis}\n\n"
               "ما هي العلاقة التي تعتقد أنها بين المقدمة والفرضية؟\n\n"
               "(1) يستلزم\n(2) محايد\n(3) يتناقض\n\n"
               "إذا كان عليك اختيار أحد هذه الخيارات، فإن إجابتك ستكون:"),
        "el": ("Προκείμενη: {premise}\nΥπόθεση: {hypothesis}\n\n"
               "Ποια πιστεύετε ότι είναι η σχέση μεταξύ της προκείμενης και της υπόθεσης;\n\n"
               "(1) Συνεπαγωγή\n(2) Ουδέτερη\n(3) Αντίφαση\n\n"
               "Αν έπρεπε να διαλέξετε μία από αυτές τις επιλογές, η απάντησή σας θα ήταν:"),
        "hi": ("आधार: {premise}\nपरिकल्पना: {hypothesis}\n\n"
               "आपको क्या लगता है कि आधार और परिकल्पना के बीच क्या संबंध है?\n\n"
               "(1) निहित\n(2) तटस्थ\n(3) विरोधाभास\n\n"
               "यदि आपको इनमें से कोई एक विकल्प चुनना हो तो आपका उत्तर होगा:"),
        "ru": ("Предпосылка: {premise}\nГипотеза: {hypothesis}\n\n"
               "Как вы думаете, каково отношение между предпосылкой и гипотезой?\n\n"
               "(1) Следование\n(2) Нейтральность\n(3) Противоречие\n\n"
               "Если бы вам пришлось выбрать один из этих вариантов, ваш ответ был бы:"),
        "sw": ("Nguzo: {premise}\nNadharia: {hypothesis}\n\n"
               "Unafikiri kuna uhusiano gani kati ya nguzo na nadharia?\n\n"
               "(1) Inajumuisha\n(2) Kutoegemea upande wowote\n(3) Kupingana\n\n"
               "Ikiwa itabidi uchague moja ya chaguzi hizi, jibu lako litakuwa:"),
        "th": ("ข้อตั้ง: {premise}\nสมมติฐาน: {hypothesis}\n\n"
               "คุณคิดว่าข้อตั้งและสมมติฐานมีความสัมพันธ์กันอย่างไร\n\n"
               "(1) สอดคล้อง\n(2) เป็นกลาง\n(3) ขัดแย้ง\n\n"
               "หากคุณต้องเลือกหนึ่งในตัวเลือกเหล่านี้ คำตอบของคุณคือ:"),
        "tr": ("Öncül: {premise}\nHipotez: {hypothesis}\n\n"
               "Sizce öncül ile hipotez arasındaki ilişki nedir?\n\n"
               "(1) Gerektirme\n(2) Nötr\n(3) Çelişki\n\n"
               "Bu seçeneklerden birini seçmeniz gerekseydi, cevabınız şu olurdu:"),
        "ur": ("مقدمہ: {premise}\nمفروضہ: {hypothesis}\n\n"
               "آپ کے خیال میں مقدمے اور مفروضے کے درمیان کیا تعلق ہے؟\n\n"
               "(1) استلزام\n(2) غیر جانبدار\n(3) تضاد\n\n"
               "اگر آپ کو ان میں سے کوئی ایک آپشن منتخب کرنا ہو تو آپ کا جواب ہوگا:"),
        "vi": ("Tiền đề: {premise}\nGiả thuyết: {hypothesis}\n\n"
               "Bạn nghĩ mối quan hệ giữa tiền đề và giả thuyết là gì?\n\n"
               "(1) Kéo theo\n(2) Trung lập\n(3) Mâu thuẫn\n\n"
               "Nếu bạn phải chọn một trong các lựa chọn này, câu trả lời của bạn sẽ là:"),
        "zh": ("前提：{premise}\n假设：{hypothesis}\n\n"
               "你认为前提和假设之间的关系是什么？\n\n"
               "(1) 蕴涵\n(2) 中立\n(3) 矛盾\n\n"
               "如果你必须选择其中一个选项，你的答案是："),
    },
    "XStoryCloze": {
        "en": ("{story}\n(1) {ending1}\n(2) {ending2}\n\nWhich of the two options is more likely to be the "
               "ending of the given story.\nYour answer:"),
        "ar": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "أي من الخيارين هو الأرجح أن يكون نهاية القصة المذكورة؟\nإجابتك:"),
        "es": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "¿Cuál de las dos opciones es más probable que sea el final de la historia dada?\nTu respuesta:"),
        "eu": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Bi aukeretatik, zein izan daiteke ziurrenik emandako istorioaren amaiera?\nZure erantzuna:"),
        "hi": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "दोनों विकल्पों में से किसके दी गई कहानी का अंत होने की संभावना अधिक है?\nआपका उत्तर:"),
        "id": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Manakah dari kedua pilihan tersebut yang lebih mungkin menjadi akhir dari cerita di atas?\n"
               "Jawaban Anda:"),
        "ru": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Какой из двух вариантов с большей вероятностью является концовкой данной истории?\nВаш ответ:"),
        "sw": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Ni ipi kati ya chaguzi hizi mbili ina uwezekano mkubwa wa kuwa mwisho wa hadithi iliyotolewa.\n"
               "Jibu lako:"),
        "te": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "ఇచ్చిన కథకు ఈ రెండు ఎంపికలలో ఏది ముగింపుగా ఉండే అవకాశం ఎక్కువ?\nమీ సమాధానం:"),
        "zh": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "这两个选项中哪一个更可能是给定故事的结局？\n你的答案："),
    },
    "MMMLU": {
        "en": ("Please answer the following multiple choice question.\n\n{question}\n(A) {A}\n(B) {B}\n(C) {C}\n"
               "(D) {D}\n\nIf you have to choose one of these options, your answer would be:"),
        "ar": ("الرجاء الإجابة على سؤال الاختيار المتعدد التالي:\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "إذا كان عليك اختيار أحد هذه الخيارات، فإن إجابتك ستكون:"),
        "bn": ("অনুগ্রহ করে নিচের বহুনির্বাচনী প্রশ্নটির উত্তর দিন।\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "যদি আপনাকে এই বিকল্পগুলোর মধ্যে একটি বেছে নিতে হয়, তাহলে আপনার উত্তর হবে:"),
        "es": ("Por favor, responda la siguiente pregunta de opción múltiple.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Si tuvieras que elegir una de estas opciones, tu respuesta sería:"),
        "hi": ("कृपया निम्नलिखित बहुविकल्पीय प्रश्न का उत्तर दें।\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "यदि आपको इनमें से कोई एक विकल्प चुनना हो तो आपका उत्तर होगा:"),
        "id": ("Silakan jawab pertanyaan pilihan ganda berikut.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Jika Anda harus memilih salah satu dari pilihan ini, jawaban Anda adalah:"),
        "ko": ("다음 객관식 질문에 답하세요.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "이 선택지 중 하나를 골라야 한다면, 당신의 답은 다음과 같습니다:"),
        "pt": ("Por favor, responda à seguinte pergunta de múltipla escolha.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Se você tivesse que escolher uma destas opções, sua resposta seria:"),
        "sw": ("Tafadhali jibu swali lifuatalo la chaguo nyingi.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Ikiwa itabidi uchague moja ya chaguzi hizi, jibu lako litakuwa:"),
        "yo": ("Jọ̀wọ́ dáhùn ìbéèrè tí ó tẹ̀lé e yìí nípa yíyan ọ̀kan lára àwọn àṣàyàn.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Tí o bá ní láti yan ọ̀kan lára àwọn àṣàyàn wọ̀nyí, ìdáhùn rẹ yóò jẹ́:"),
    },
    "XQuAD": {
        "en": ("Please answer these questions only based on the given context.\n\nContext: {context}\n\n"
               "Question: {question}\n\nAnswer:"),
        "ar": ("يرجى الإجابة على هذه الأسئلة فقط بناءً على السياق المعطى.\n\n"
               "سياق: {context}\n\nسؤال: {question}\n\nالإجابة:"),
        "de": ("Bitte beantworten Sie diese Fragen nur auf der Grundlage des gegebenen Kontexts.\n\n"
               "Kontext: {context}\n\nFrage: {question}\n\nAntwort:"),
        "el": ("Παρακαλώ απαντήστε σε αυτές τις ερωτήσεις μόνο με βάση το δεδομένο πλαίσιο.\n\n"
               "Πλαίσιο: {context}\n\nΕρώτηση: {question}\n\nΑπάντηση:"),
        "es": ("Por favor, responda estas preguntas basándose únicamente en el contexto dado.\n\n"
               "Contexto: {context}\n\nPregunta: {question}\n\nRespuesta:"),
        "hi": ("कृपया इन प्रश्नों के उत्तर केवल दिए गए संदर्भ के आधार पर दें।\n\n"
               "संदर्भ: {context}\n\nप्रश्न: {question}\n\nउत्तर:"),
        "ru": ("Пожалуйста, отвечайте на эти вопросы только на основе данного контекста.\n\n"
               "Контекст: {context}\n\nВопрос: {question}\n\nОтвет:"),
        "th": ("โปรดตอบคำถามเหล่านี้โดยอิงจากบริบทที่ให้มาเท่านั้น\n\n"
               "บริบท: {context}\n\nคำถาม: {question}\n\nคำตอบ:"),
        "tr": ("Lütfen bu soruları yalnızca verilen bağlama dayanarak yanıtlayın.\n\n"
               "Bağlam: {context}\n\nSoru: {question}\n\nCevap:"),
        "vi": ("Vui lòng trả lời những câu hỏi này chỉ dựa trên ngữ cảnh đã cho.\n\n"
               "Ngữ cảnh: {context}\n\nCâu hỏi: {question}\n\nCâu trả lời:"),
        "zh": ("请仅根据给定的上下文回答这些问题。\n\n"
               "上下文：{context}\n\n问题：{question}\n\n答案："),
    },
    "MKQA": {
        "en": "Please answer the following question.\n\n{question}\n\nYour answer:",
        "ar": "الرجاء الإجابة على السؤال التالي:\n\n{question}\n\nإجابتك:",
        "de": "Bitte beantworten Sie folgende Frage.\n\n{question}\n\nIhre Antwort:",
        "es": "Por favor, responda la siguiente pregunta.\n\n{question}\n\nSu respuesta:",
        "fr": "Veuillez répondre à la question suivante.\n\n{question}\n\nVotre réponse :",
        "ja": "次の質問に答えてください。\n\n{question}\n\nあなたの答え：",
        "ko": "다음 질문에 답하세요.\n\n{question}\n\n답변:",
        "pt": "Por favor, responda à seguinte pergunta.\n\n{question}\n\nSua resposta:",
        "ru": "Пожалуйста, ответьте на следующий вопрос.\n\n{question}\n\nВаш ответ:",
        "tr": "Lütfen aşağıdaki soruyu yanıtlayın.\n\n{question}\n\nCevabınız:",
        "vi": "Vui lòng trả lời câu hỏi sau.\n\n{question}\n\nCâu trả lời của bạn:",
        "zh": "请回答以下问题。\n\n{question}\n\n您的答案：",
    },
    "XLSum": {
        "en": "Please summarize the following content into one sentence.\n{title}\n{text}",
        "ar": "يرجى تلخيص المحتوى التالي في جملة واحدة.\n{title}\n{text}",
        "fr": "Veuillez résumer le contenu suivant en une phrase.\n{title}\n{text}",
        "hi": "कृपया निम्नलिखित सामग्री को एक वाक्य में सारांशित करें।\n{title}\n{text}",
        "id": "Silakan ringkas konten berikut dalam satu kalimat.\n{title}\n{text}",
        "ru": "Пожалуйста, обобщите следующее содержание в одном предложении.\n{title}\n{text}",
        "sw": "Tafadhali fupisha yaliyomo katika sentensi moja.\n{title}\n{text}",
        "tr": "Lütfen aşağıdaki içeriği tek bir cümleyle özetleyin.\n{title}\n{text}",
        "ur": "براہ کرم درج ذیل مواد کا ایک جملے میں خلاصہ کریں۔\n{title}\n{text}",
        "vi": "Vui lòng tóm tắt nội dung sau đây trong một câu.\n{title}\n{text}",
    },
}
_BY_LOWER = {name.lower(): name for name in TEMPLATES}


def hub_template(benchmark: str, lang: str) -> str:
    """The hub prompt template of ``benchmark`` in ``lang``; English when ``lang`` has none.

    ``benchmark`` is matched case-insensitively; an unknown benchmark raises ``KeyError``.
    """
    name = _BY_LOWER.get(benchmark.strip().lower())
    if name is None:
        raise KeyError(f"no hub templates for benchmark {benchmark!r}; valid: {', '.join(TEMPLATES)}")
    by_lang = TEMPLATES[name]
    return by_lang.get(lang.strip().lower(), by_lang["en"])
