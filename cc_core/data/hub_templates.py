"""Per-language prompt templates for the Hugging Face hub loader; a language without one falls back to English.

Usage: ``hub_template("XNLI", "ar").format(premise=..., hypothesis=...)`` (placeholders as in ``HUB_TEMPLATES``).

Provenance of the wording, per language (a prompt built from the hub must equal the authors' prompt
byte for byte, so every template is the authors' own where they have one):

* languages in ``../shared/benchmarks`` (the authors' files): checked against every prompt of the
  sample by ``tests/unit/test_hub_prompts_match_authors.py``;
* the other paper languages: transcribed from the authors' repository (YYF-Tommy/CC-Tuning,
  ``Inference/data/<BENCH>/<split>/<lang>.json``), not checked by a test here (no local copy);
* languages outside the paper's ten per benchmark (e.g. XNLI ``vi``, MKQA ``es``/``fr``): the
  authors have no prompt; the project's translation in the authors' structure.
"""

from __future__ import annotations

# benchmark -> language -> template. Every language's template has exactly the placeholders
# of the English one (which equals ``cc_core.data.benchmarks.HUB_TEMPLATES``) and keeps the
# option markers "(1) " / "(A) " in ASCII, so ``cc_core.scoring.choice.parse_options`` finds them.
# The authors' wording is kept even where it reads oddly (XNLI sw "kati ya dhana na dhana",
# el "της υπόθεσης και της υπόθεσης"): the prompts must be theirs, not better ones.
TEMPLATES: dict[str, dict[str, str]] = {
    "XNLI": {
        "en": ("Premise: {premise}\nHypothesis: {hypothesis}\n\nWhat do you think is the relationship between "
               "the premise and the hypothesis?\n\n(1) Entail \n(2) Neutral\n(3) Contradict\n\n"
               "If you have to choose one of these options, your answer would be:"),
        "ar": ("المقدمة: {premise}\nالفرضية: {hypothesis}\n\n"
               "ما هي العلاقة التي تعتقد أنها بين المقدمة والفرضية؟\n\n"
               "(1) يستلزم\n(2) محايد\n(3) يتناقض\n\n"
               "إذا كان عليك اختيار أحد هذه الخيارات، فإن إجابتك ستكون:"),
        "el": ("Προϋπόθεση: {premise}\nΥπόθεση: {hypothesis}\n\n"
               "Ποια πιστεύετε ότι είναι η σχέση μεταξύ της υπόθεσης και της υπόθεσης;\n\n"
               "(1) Συνεπάγεται\n(2) Ουδέτερο\n(3) Αντίφαση\n\n"
               "Εάν πρέπει να επιλέξετε μία από αυτές τις επιλογές, η απάντησή σας θα ήταν:"),
        "hi": ("आधार: {premise}\nपरिकल्पना: {hypothesis}\n\n"
               "आपको क्या लगता है कि आधार और परिकल्पना के बीच क्या संबंध है?\n\n"
               "(1) निहित\n(2) तटस्थ\n(3) विरोधाभास\n\n"
               "यदि आपको इनमें से कोई एक विकल्प चुनना हो तो आपका उत्तर होगा:"),
        "ru": ("Предпосылка: {premise}\nГипотеза: {hypothesis}\n\n"
               "Как вы думаете, какова связь между предпосылкой и гипотезой?\n\n"
               "(1) Следствие\n(2) Нейтральное\n(3) Противоречие\n\n"
               "Если вам придется выбрать один из этих вариантов, ваш ответ будет следующим:"),
        "sw": ("Nguzo: {premise}\nNadharia: {hypothesis}\n\n"
               "Unafikiri kuna uhusiano gani kati ya dhana na dhana?\n\n"
               "(1) Inajumuisha\n(2) Kuegemea upande wowote\n(3) Kupingana\n\n"
               "Ikiwa itabidi uchague moja ya chaguzi hizi, jibu lako litakuwa:"),
        "th": ("ข้อสมมติฐาน: {premise}\nสมมติฐาน: {hypothesis}\n\n"
               "คุณคิดว่าความสัมพันธ์ระหว่างข้อสมมติฐานและสมมติฐานคืออะไร\n\n"
               "(1) บ่งบอก\n(2) เป็นกลาง\n(3) ขัดแย้ง\n\n"
               "หากคุณต้องเลือกหนึ่งในตัวเลือกเหล่านี้ คำตอบของคุณจะเป็น:"),
        "tr": ("Öncül: {premise}\nHipotez: {hypothesis}\n\n"
               "Öncül ile hipotez arasındaki ilişkinin ne olduğunu düşünüyorsunuz?\n\n"
               "(1) Gerektirir\n(2) Tarafsız\n(3) Çelişkili\n\n"
               "Bu seçeneklerden birini seçmek zorunda kalırsanız cevabınız şu olacaktır:"),
        "ur": ("بنیاد: {premise}\nمفروضہ: {hypothesis}\n\n"
               "آپ کے خیال میں بنیاد اور مفروضے کے درمیان کیا تعلق ہے؟\n\n"
               "(1) داخل کرنا\n(2) غیر جانبدار\n(3) تضاد\n\n"
               "اگر آپ کو ان اختیارات میں سے کسی ایک کا انتخاب کرنا ہے، تو آپ کا جواب یہ ہوگا:"),
        # Not a paper language: the closing line is the authors' (their XNLI preparation script), the rest ours.
        "vi": ("Tiền đề: {premise}\nGiả thuyết: {hypothesis}\n\n"
               "Bạn nghĩ mối quan hệ giữa tiền đề và giả thuyết là gì?\n\n"
               "(1) Kéo theo\n(2) Trung lập\n(3) Mâu thuẫn\n\n"
               "Nếu bạn phải chọn một trong những lựa chọn này, câu trả lời của bạn sẽ là:"),
        "zh": ("前提：{premise}\n假设：{hypothesis}\n\n"
               "你认为前提和假设之间的关系是什么？\n\n"
               "(1) 蕴涵\n(2) 中立\n(3) 矛盾\n\n"
               "如果你必须选择其中一个选项，你的答案是："),
    },
    # {story} is the four context sentences joined without a separator, as in the authors' files
    # ("...fan in 2011.I was recovering...").
    "XStoryCloze": {
        "en": ("{story}\n(1) {ending1}\n(2) {ending2}\n\nWhich of the two options is more likely to be the "
               "ending of the given story.\nYour answer:"),
        "ar": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "أي من الخيارين هو الأرجح أن يكون نهاية القصة المذكورة؟\nإجابتك:"),
        "es": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "¿Cuál de las dos opciones es más probable que sea el final de la historia dada?\nTu respuesta:"),
        "eu": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Bi aukeretatik zein izango da litekeena da emandako istorioaren amaiera.\nZure erantzuna:"),
        "hi": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "दिए गए कहानी का अंत दो विकल्पों में से किस विकल्प पर होने की अधिक संभावना है?\nआपका उत्तर:"),
        "id": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Manakah dari dua pilihan tersebut yang lebih mungkin menjadi akhir dari cerita yang diberikan?\n"
               "Jawaban Anda:"),
        "ru": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Какой из двух вариантов вероятнее всего будет окончанием данной истории.\nВаш ответ:"),
        "sw": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "Ni ipi kati ya chaguzi hizi mbili ina uwezekano mkubwa wa kuwa mwisho wa hadithi iliyotolewa.\n"
               "Jibu lako:"),
        # "\u200c" (zero-width non-joiner) is in the authors' text: invisible, but part of the bytes.
        "te": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "ఈ రెండు ఆప్షన్\u200cలలో ఏది ఇవ్వబడిన కథ ముగింపు అయ్యే అవకాశం ఉంది.\nమీ సమాధానం:"),
        "zh": ("{story}\n(1) {ending1}\n(2) {ending2}\n\n"
               "这两个选项中哪一个更可能是给定故事的结局？\n你的答案："),
    },
    "MMMLU": {
        "en": ("Please answer the following multiple choice question.\n\n{question}\n(A) {A}\n(B) {B}\n(C) {C}\n"
               "(D) {D}\n\nIf you have to choose one of these options, your answer would be:"),
        "ar": ("الرجاء الإجابة على سؤال الاختيار المتعدد التالي:\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "إذا كان عليك اختيار أحد هذه الخيارات، فإن إجابتك ستكون:"),
        "bn": ("অনুগ্রহ করে নিম্নলিখিত বহুনির্বাচনী প্রশ্নের উত্তর দিন।\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "যদি আপনাকে এই বিকল্পগুলির মধ্যে একটি বেছে নিতে হয়, তাহলে আপনার উত্তর হবে:"),
        "es": ("Por favor responda la siguiente pregunta de opción múltiple.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Si tuvieras que elegir una de estas opciones tu respuesta sería:"),
        "hi": ("कृपया निम्नलिखित बहुविकल्पीय प्रश्न का उत्तर दें।\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "यदि आपको इनमें से कोई एक विकल्प चुनना हो तो आपका उत्तर होगा:"),
        "id": ("Jawablah pertanyaan pilihan ganda berikut.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Jika Anda harus memilih salah satu opsi ini, jawaban Anda adalah:"),
        "ko": ("다음의 객관식 질문에 답하세요.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "만약 여러분이 이러한 옵션 중 하나를 선택해야 한다면, 답은 다음과 같습니다."),
        "pt": ("Por favor, responda à seguinte pergunta de múltipla escolha.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Se você tivesse que escolher uma dessas opções, sua resposta seria:"),
        "sw": ("Tafadhali jibu swali lifuatalo la chaguo nyingi.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Ikiwa itabidi uchague moja ya chaguzi hizi, jibu lako litakuwa:"),
        "yo": ("Jọwọ dahun ibeere aṣayan pupọ ti o tẹle.\n\n"
               "{question}\n(A) {A}\n(B) {B}\n(C) {C}\n(D) {D}\n\n"
               "Ti o ba ni lati yan ọkan ninu awọn aṣayan wọnyi, idahun rẹ yoo jẹ:"),
    },
    # The context and the question are on consecutive lines (one "\n"); the answer cue is the
    # authors' "Your answer:" in every language. zh has a space after each full-width colon.
    "XQuAD": {
        "en": ("Please answer these questions only based on the given context.\n\nContext: {context}\n"
               "Question: {question}\n\nYour answer:"),
        "ar": ("يرجى الإجابة على هذه الأسئلة فقط بناءً على السياق المعطى.\n\n"
               "سياق: {context}\nسؤال: {question}\n\nإجابتك:"),
        "de": ("Bitte beantworten Sie diese Fragen nur auf der Grundlage des gegebenen Kontexts.\n\n"
               "Kontext: {context}\nFrage: {question}\n\nIhre Antwort:"),
        "el": ("Απαντήστε σε αυτές τις ερωτήσεις μόνο με βάση το δεδομένο πλαίσιο.\n\n"
               "Συμφραζόμενα: {context}\nΕρώτηση: {question}\n\nΗ απάντησή σας:"),
        # Not a paper language: "Tu respuesta:" as in the authors' Spanish XStoryCloze/MMMLU prompts.
        "es": ("Por favor, responda estas preguntas basándose únicamente en el contexto dado.\n\n"
               "Contexto: {context}\nPregunta: {question}\n\nTu respuesta:"),
        "hi": ("कृपया इन प्रश्नों का उत्तर केवल दिए गए संदर्भ के आधार पर दें।\n\n"
               "संदर्भ: {context}\nप्रश्न: {question}\n\nआपका उत्तर:"),
        "ru": ("Пожалуйста, отвечайте на эти вопросы только на основе данного контекста.\n\n"
               "Контекст: {context}\nВопрос: {question}\n\nВаш ответ:"),
        "th": ("โปรดตอบคำถามเหล่านี้ตามบริบทที่กำหนดให้เท่านั้น\n\n"
               "บริบท: {context}\nคำถาม: {question}\n\nคำตอบของคุณ:"),
        "tr": ("Lütfen bu soruları yalnızca verilen bağlama göre cevaplayın.\n\n"
               "Bağlam: {context}\nSoru: {question}\n\nCevabınız:"),
        "vi": ("Vui lòng trả lời những câu hỏi này chỉ dựa trên ngữ cảnh được đưa ra.\n\n"
               "Bối cảnh: {context}\nCâu hỏi: {question}\n\nCâu trả lời của bạn:"),
        "zh": ("请仅根据给定的上下文回答这些问题。\n\n"
               "上下文： {context}\n问题： {question}\n\n您的答案："),
    },
    "MKQA": {
        "en": "Please answer the following question.\n\n{question}\n\nYour answer:",
        "ar": "الرجاء الإجابة على السؤال التالي:\n\n{question}\n\nإجابتك:",
        "de": "Bitte beantworten Sie folgende Frage.\n\n{question}\n\nIhre Antwort:",
        # es, fr: not paper languages; es uses the authors' Spanish "Tu respuesta:" (XStoryCloze/MMMLU).
        "es": "Por favor, responda la siguiente pregunta.\n\n{question}\n\nTu respuesta:",
        "fr": "Veuillez répondre à la question suivante.\n\n{question}\n\nVotre réponse :",
        "ja": "次の質問に答えてください。\n\n{question}\n\nあなたの答え：",
        "ko": "다음 질문에 답해주세요.\n\n{question}\n\n당신의 답변:",
        "pt": "Por favor, responda à seguinte questão.\n\n{question}\n\nA Sua Resposta:",
        "ru": "Пожалуйста, ответьте на следующий вопрос.\n\n{question}\n\nВаш ответ:",
        "tr": "Lütfen aşağıdaki soruyu cevaplayınız.\n\n{question}\n\nCevabınız:",
        "vi": "Vui lòng trả lời câu hỏi sau.\n\n{question}\n\nCâu trả lời của bạn:",
        "zh": "请回答以下问题。\n\n{question}\n\n您的答案：",
    },
    "XLSum": {
        "en": "Please summarize the following content into one sentence.\n{title}\n{text}",
        "ar": "يرجى تلخيص المحتوى التالي في جملة واحدة.\n{title}\n{text}",
        "fr": "Veuillez résumer le contenu suivant en une phrase.\n{title}\n{text}",
        "hi": "कृपया निम्नलिखित सामग्री को एक वाक्य में संक्षेपित करें।\n{title}\n{text}",
        "id": "Harap rangkum konten berikut menjadi satu kalimat.\n{title}\n{text}",
        "ru": "Пожалуйста, обобщите следующее содержание в одном предложении.\n{title}\n{text}",
        "sw": "Tafadhali fupisha yaliyomo katika sentensi moja.\n{title}\n{text}",
        "tr": "Lütfen aşağıdaki içeriği tek bir cümlede özetleyin.\n{title}\n{text}",
        "ur": "براہ کرم مندرجہ ذیل مواد کو ایک جملے میں خلاصہ کریں۔\n{title}\n{text}",
        "vi": "Vui lòng tóm tắt nội dung sau thành một câu.\n{title}\n{text}",
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
