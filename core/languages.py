"""FLORES-200 language codes and human names.

Polyprune names languages by their FLORES-200 code (``<ISO 639-3>_<ISO 15924 script>``, for
example ``fra_Latn`` or ``zho_Hans``). This module holds the full table of the 204 codes with
English names as in the NLLB / FLORES-200 language table, a mapping from the two-letter codes used
by multilingual benchmarks (XNLI, PAWS-X, XStoryCloze, XCOPA, XWinograd) to FLORES codes, and small
helpers to resolve user input, search the table and label a language for display.

The module is Qt-free and imports nothing heavy, so both the command line and the GUI can use it.
"""
from __future__ import annotations

import difflib

from polyprune.errors import PolypruneError

__all__ = [
    "FLORES_LANGUAGES",
    "TASK_TO_FLORES",
    "language_name",
    "resolve_language",
    "search_languages",
    "display_label",
]

#: All 204 FLORES-200 codes mapped to English names (NLLB / FLORES-200 table). A language written in
#: two scripts carries the script in parentheses so that every name is unique.
FLORES_LANGUAGES: dict[str, str] = {
    "ace_Arab": "Acehnese (Arabic script)",
    "ace_Latn": "Acehnese (Latin script)",
    "acm_Arab": "Mesopotamian Arabic",
    "acq_Arab": "Ta'izzi-Adeni Arabic",
    "aeb_Arab": "Tunisian Arabic",
    "afr_Latn": "Afrikaans",
    "ajp_Arab": "South Levantine Arabic",
    "aka_Latn": "Akan",
    "als_Latn": "Tosk Albanian",
    "amh_Ethi": "Amharic",
    "apc_Arab": "North Levantine Arabic",
    "arb_Arab": "Modern Standard Arabic",
    "arb_Latn": "Modern Standard Arabic (Romanized)",
    "ars_Arab": "Najdi Arabic",
    "ary_Arab": "Moroccan Arabic",
    "arz_Arab": "Egyptian Arabic",
    "asm_Beng": "Assamese",
    "ast_Latn": "Asturian",
    "awa_Deva": "Awadhi",
    "ayr_Latn": "Central Aymara",
    "azb_Arab": "South Azerbaijani",
    "azj_Latn": "North Azerbaijani",
    "bak_Cyrl": "Bashkir",
    "bam_Latn": "Bambara",
    "ban_Latn": "Balinese",
    "bel_Cyrl": "Belarusian",
    "bem_Latn": "Bemba",
    "ben_Beng": "Bengali",
    "bho_Deva": "Bhojpuri",
    "bjn_Arab": "Banjar (Arabic script)",
    "bjn_Latn": "Banjar (Latin script)",
    "bod_Tibt": "Standard Tibetan",
    "bos_Latn": "Bosnian",
    "bug_Latn": "Buginese",
    "bul_Cyrl": "Bulgarian",
    "cat_Latn": "Catalan",
    "ceb_Latn": "Cebuano",
    "ces_Latn": "Czech",
    "cjk_Latn": "Chokwe",
    "ckb_Arab": "Central Kurdish",
    "crh_Latn": "Crimean Tatar",
    "cym_Latn": "Welsh",
    "dan_Latn": "Danish",
    "deu_Latn": "German",
    "dik_Latn": "Southwestern Dinka",
    "dyu_Latn": "Dyula",
    "dzo_Tibt": "Dzongkha",
    "ell_Grek": "Greek",
    "eng_Latn": "English",
    "epo_Latn": "Esperanto",
    "est_Latn": "Estonian",
    "eus_Latn": "Basque",
    "ewe_Latn": "Ewe",
    "fao_Latn": "Faroese",
    "fij_Latn": "Fijian",
    "fin_Latn": "Finnish",
    "fon_Latn": "Fon",
    "fra_Latn": "French",
    "fur_Latn": "Friulian",
    "fuv_Latn": "Nigerian Fulfulde",
    "gaz_Latn": "West Central Oromo",
    "gla_Latn": "Scottish Gaelic",
    "gle_Latn": "Irish",
    "glg_Latn": "Galician",
    "grn_Latn": "Guarani",
    "guj_Gujr": "Gujarati",
    "hat_Latn": "Haitian Creole",
    "hau_Latn": "Hausa",
    "heb_Hebr": "Hebrew",
    "hin_Deva": "Hindi",
    "hne_Deva": "Chhattisgarhi",
    "hrv_Latn": "Croatian",
    "hun_Latn": "Hungarian",
    "hye_Armn": "Armenian",
    "ibo_Latn": "Igbo",
    "ilo_Latn": "Ilocano",
    "ind_Latn": "Indonesian",
    "isl_Latn": "Icelandic",
    "ita_Latn": "Italian",
    "jav_Latn": "Javanese",
    "jpn_Jpan": "Japanese",
    "kab_Latn": "Kabyle",
    "kac_Latn": "Jingpho",
    "kam_Latn": "Kamba",
    "kan_Knda": "Kannada",
    "kas_Arab": "Kashmiri (Arabic script)",
    "kas_Deva": "Kashmiri (Devanagari script)",
    "kat_Geor": "Georgian",
    "kaz_Cyrl": "Kazakh",
    "kbp_Latn": "Kabiyè",
    "kea_Latn": "Kabuverdianu",
    "khk_Cyrl": "Halh Mongolian",
    "khm_Khmr": "Khmer",
    "kik_Latn": "Kikuyu",
    "kin_Latn": "Kinyarwanda",
    "kir_Cyrl": "Kyrgyz",
    "kmb_Latn": "Kimbundu",
    "kmr_Latn": "Northern Kurdish",
    "knc_Arab": "Central Kanuri (Arabic script)",
    "knc_Latn": "Central Kanuri (Latin script)",
    "kon_Latn": "Kikongo",
    "kor_Hang": "Korean",
    "lao_Laoo": "Lao",
    "lij_Latn": "Ligurian",
    "lim_Latn": "Limburgish",
    "lin_Latn": "Lingala",
    "lit_Latn": "Lithuanian",
    "lmo_Latn": "Lombard",
    "ltg_Latn": "Latgalian",
    "ltz_Latn": "Luxembourgish",
    "lua_Latn": "Luba-Kasai",
    "lug_Latn": "Ganda",
    "luo_Latn": "Luo",
    "lus_Latn": "Mizo",
    "lvs_Latn": "Standard Latvian",
    "mag_Deva": "Magahi",
    "mai_Deva": "Maithili",
    "mal_Mlym": "Malayalam",
    "mar_Deva": "Marathi",
    "min_Arab": "Minangkabau (Arabic script)",
    "min_Latn": "Minangkabau (Latin script)",
    "mkd_Cyrl": "Macedonian",
    "mlt_Latn": "Maltese",
    "mni_Beng": "Meitei (Bengali script)",
    "mos_Latn": "Mossi",
    "mri_Latn": "Maori",
    "mya_Mymr": "Burmese",
    "nld_Latn": "Dutch",
    "nno_Latn": "Norwegian Nynorsk",
    "nob_Latn": "Norwegian Bokmål",
    "npi_Deva": "Nepali",
    "nso_Latn": "Northern Sotho",
    "nus_Latn": "Nuer",
    "nya_Latn": "Nyanja",
    "oci_Latn": "Occitan",
    "ory_Orya": "Odia",
    "pag_Latn": "Pangasinan",
    "pan_Guru": "Eastern Panjabi",
    "pap_Latn": "Papiamento",
    "pbt_Arab": "Southern Pashto",
    "pes_Arab": "Western Persian",
    "plt_Latn": "Plateau Malagasy",
    "pol_Latn": "Polish",
    "por_Latn": "Portuguese",
    "prs_Arab": "Dari",
    "quy_Latn": "Ayacucho Quechua",
    "ron_Latn": "Romanian",
    "run_Latn": "Rundi",
    "rus_Cyrl": "Russian",
    "sag_Latn": "Sango",
    "san_Deva": "Sanskrit",
    "sat_Olck": "Santali",
    "scn_Latn": "Sicilian",
    "shn_Mymr": "Shan",
    "sin_Sinh": "Sinhala",
    "slk_Latn": "Slovak",
    "slv_Latn": "Slovenian",
    "smo_Latn": "Samoan",
    "sna_Latn": "Shona",
    "snd_Arab": "Sindhi",
    "som_Latn": "Somali",
    "sot_Latn": "Southern Sotho",
    "spa_Latn": "Spanish",
    "srd_Latn": "Sardinian",
    "srp_Cyrl": "Serbian",
    "ssw_Latn": "Swati",
    "sun_Latn": "Sundanese",
    "swe_Latn": "Swedish",
    "swh_Latn": "Swahili",
    "szl_Latn": "Silesian",
    "tam_Taml": "Tamil",
    "taq_Latn": "Tamasheq (Latin script)",
    "taq_Tfng": "Tamasheq (Tifinagh script)",
    "tat_Cyrl": "Tatar",
    "tel_Telu": "Telugu",
    "tgk_Cyrl": "Tajik",
    "tgl_Latn": "Tagalog",
    "tha_Thai": "Thai",
    "tir_Ethi": "Tigrinya",
    "tpi_Latn": "Tok Pisin",
    "tsn_Latn": "Tswana",
    "tso_Latn": "Tsonga",
    "tuk_Latn": "Turkmen",
    "tum_Latn": "Tumbuka",
    "tur_Latn": "Turkish",
    "twi_Latn": "Twi",
    "tzm_Tfng": "Central Atlas Tamazight",
    "uig_Arab": "Uyghur",
    "ukr_Cyrl": "Ukrainian",
    "umb_Latn": "Umbundu",
    "urd_Arab": "Urdu",
    "uzn_Latn": "Northern Uzbek",
    "vec_Latn": "Venetian",
    "vie_Latn": "Vietnamese",
    "war_Latn": "Waray",
    "wol_Latn": "Wolof",
    "xho_Latn": "Xhosa",
    "ydd_Hebr": "Eastern Yiddish",
    "yor_Latn": "Yoruba",
    "yue_Hant": "Yue Chinese",
    "zho_Hans": "Chinese (Simplified)",
    "zho_Hant": "Chinese (Traditional)",
    "zsm_Latn": "Standard Malay",
    "zul_Latn": "Zulu",
}

#: Two-letter language codes used by XNLI, PAWS-X, XStoryCloze, XCOPA and XWinograd, mapped to
#: FLORES-200 codes. ``jp`` is XWinograd's spelling of Japanese.
TASK_TO_FLORES: dict[str, str] = {
    "ar": "arb_Arab",
    "bg": "bul_Cyrl",
    "de": "deu_Latn",
    "el": "ell_Grek",
    "en": "eng_Latn",
    "es": "spa_Latn",
    "fr": "fra_Latn",
    "hi": "hin_Deva",
    "ru": "rus_Cyrl",
    "sw": "swh_Latn",
    "th": "tha_Thai",
    "tr": "tur_Latn",
    "ur": "urd_Arab",
    "vi": "vie_Latn",
    "zh": "zho_Hans",
    "ja": "jpn_Jpan",
    "ko": "kor_Hang",
    "eu": "eus_Latn",
    "id": "ind_Latn",
    "my": "mya_Mymr",
    "te": "tel_Telu",
    "et": "est_Latn",
    "ht": "hat_Latn",
    "it": "ita_Latn",
    "qu": "quy_Latn",
    "ta": "tam_Taml",
    "pt": "por_Latn",
    "jp": "jpn_Jpan",
}

_EM_DASH = "\u2014"

# Case-insensitive lookup tables, built once.
_CODE_BY_LOWER: dict[str, str] = {code.lower(): code for code in FLORES_LANGUAGES}
_CODE_BY_NAME: dict[str, str] = {name.lower(): code for code, name in FLORES_LANGUAGES.items()}


def _unknown(text: str) -> PolypruneError:
    """Build the error for an unknown language, suggesting up to three close matches."""
    query = text.strip().lower()
    candidates: dict[str, str] = {}  # lowercased code or name -> canonical code
    candidates.update(_CODE_BY_LOWER)
    candidates.update(_CODE_BY_NAME)
    suggestions: list[str] = []
    for match in difflib.get_close_matches(query, list(candidates), n=10, cutoff=0.6):
        code = candidates[match]
        if code not in suggestions:
            suggestions.append(code)
        if len(suggestions) == 3:
            break
    hint = "codes look like `fra_Latn` (ISO 639-3 language + script); see `polyprune.languages.FLORES_LANGUAGES`"
    if suggestions:
        listed = ", ".join(f"{code} ({FLORES_LANGUAGES[code]})" for code in suggestions)
        fix = f"did you mean {listed}? FLORES-200 {hint}"
    else:
        fix = f"use a FLORES-200 code or an English language name; {hint}"
    return PolypruneError(f"Unknown language {text!r}", fix)


def language_name(code: str) -> str:
    """Return the English name of a FLORES-200 code.

    Args:
        code: a FLORES-200 code (``"swh_Latn"``; case-insensitive) or a two-letter benchmark code
            (``"sw"``) from :data:`TASK_TO_FLORES`.

    Returns:
        The language's English name, e.g. ``"Swahili"``.

    Raises:
        PolypruneError: the code is unknown; the fix suggests close matches.
    """
    key = code.strip()
    canonical = _CODE_BY_LOWER.get(key.lower()) or TASK_TO_FLORES.get(key.lower())
    if canonical is None:
        raise _unknown(code)
    return FLORES_LANGUAGES[canonical]


def resolve_language(text: str) -> str:
    """Turn what a user typed into a FLORES-200 code.

    Accepts a FLORES-200 code in any case (``"FRA_latn"`` -> ``"fra_Latn"``), a two-letter
    benchmark code (``"fr"``), an English name in any case (``"french"``, ``"Swahili"``), or a
    label made by :func:`display_label` (``"Swahili — swh_Latn"``).

    Returns:
        The canonical FLORES-200 code.

    Raises:
        PolypruneError: nothing matches; the fix suggests close matches.
    """
    key = text.strip()
    if _EM_DASH in key:  # a display label: "Swahili — swh_Latn"
        key = key.rsplit(_EM_DASH, 1)[1].strip()
    low = key.lower()
    for table in (_CODE_BY_LOWER, TASK_TO_FLORES, _CODE_BY_NAME):
        if low in table:
            return table[low]
    raise _unknown(text)


def search_languages(query: str) -> list[tuple[str, str]]:
    """Find languages whose code or name contains ``query`` (case-insensitive).

    Languages whose name starts with the query come first, then those whose code starts with it,
    then the other matches; each group is sorted alphabetically by name. An empty query returns all
    204 languages sorted by name.

    Returns:
        ``(code, name)`` pairs, e.g. ``[("swh_Latn", "Swahili")]`` for ``"swah"``.
    """
    q = query.strip().lower()

    def rank(item: tuple[str, str]) -> tuple[int, str, str]:
        code, name = item
        if not q or name.lower().startswith(q):
            group = 0
        elif code.lower().startswith(q):
            group = 1
        else:
            group = 2
        return group, name.lower(), code

    hits = [
        (code, name)
        for code, name in FLORES_LANGUAGES.items()
        if not q or q in code.lower() or q in name.lower()
    ]
    return sorted(hits, key=rank)


def display_label(code: str) -> str:
    """Label a language for display, e.g. ``"Swahili — swh_Latn"`` (em dash).

    Accepts anything :func:`resolve_language` accepts.
    """
    canonical = resolve_language(code)
    return f"{FLORES_LANGUAGES[canonical]} {_EM_DASH} {canonical}"
