#!/usr/bin/env python3
"""Writes the HL7 v2 conformance corpus (wellformed/ and malformed/) with exact bytes.

Run from anywhere: `python3 conformance/hl7v2/generate.py`. All patients and identifiers are
synthetic. Edit the case lists below and re-run rather than editing the generated files.
"""
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
WF = os.path.join(HERE, "wellformed")
MF = os.path.join(HERE, "malformed")

TS = "20240315103000"


def msh(mtype, ctl, ver, extra="", app="CLINIC_EHR^2.16.840.1.113883.3.9999^ISO", fac="NORTH_CLINIC",
        fs="|", enc="^~\\&"):
    """MSH up to MSH-12; `extra` is appended verbatim (starting with the field separator)."""
    f = [app, fac, "SDOH_GW", "GW_FAC", TS, "", mtype, ctl, "P", ver]
    return "MSH" + fs + enc + fs + fs.join(f) + extra


WELLFORMED = []


def wf(name, description, segments, values, mtype, trigger, ver, ctl, term="\r", encoding="utf-8",
       tail="", batch=None, seg_ids=None):
    data = (term.join(segments) + term + tail).encode(encoding)
    exp = {
        "description": description,
        "control_id": ctl,
        "message_type": mtype,
        "trigger": trigger,
        "version": ver,
        "segments": seg_ids if seg_ids is not None else [s[:3] for s in segments],
        "values": values,
    }
    if batch is not None:
        exp["messages_in_batch"] = batch
    WELLFORMED.append((name, data, exp))


PID = r"PID|1||MRN10001^^^NORTH_CLINIC^MR~999-01-0001^^^SSA^SS||Smith^Alex^J^^^^L||19800412|F|||12 Elm St^^Springfield^IL^62701^USA||(217)555-0101"
PV1 = "PV1|1|O|CLINIC^101^A||||1234^Welby^Marcus||||||||||||V0001"

# --- ADT -----------------------------------------------------------------------------------
wf("adt_a01_admit", "ADT^A01 admit with two patient identifiers (repetitions) and a PV1",
   [msh("ADT^A01^ADT_A01", "ADT0001", "2.5.1"), "EVN|A01|" + TS, PID, PV1],
   {"PID-5.1": "Smith", "PID-5.2": "Alex", "PID-3.1": "MRN10001", "PID-3[2].1": "999-01-0001",
    "PID-3[2].5": "SS", "PID-7": "19800412", "PV1-3.2": "101", "MSH-9.3": "ADT_A01", "EVN-1": "A01",
    "MSH-3.2": "2.16.840.1.113883.3.9999"},
   "ADT", "A01", "2.5.1", "ADT0001")
wf("adt_a03_discharge", "ADT^A03 discharge with PV1-45 discharge date/time",
   [msh("ADT^A03^ADT_A03", "ADT0003", "2.5.1"), "EVN|A03|" + TS, PID,
    PV1 + "||||||||||||||||||||||||||20240316120000"],
   {"PV1-45": "20240316120000", "PV1-19": "V0001", "PID-8": "F"},
   "ADT", "A03", "2.5.1", "ADT0003")
wf("adt_a04_register", "ADT^A04 outpatient registration, v2.3.1",
   [msh("ADT^A04^ADT_A01", "ADT0004", "2.3.1"), "EVN|A04|" + TS,
    "PID|1||MRN10002^^^NORTH_CLINIC^MR||Garcia^Maria^L||19921103|F|||45 Oak Ave^Apt 2^Riverton^WY^82501", PV1],
   {"PID-5.1": "Garcia", "PID-11.2": "Apt 2", "PID-11.3": "Riverton", "MSH-12": "2.3.1"},
   "ADT", "A04", "2.3.1", "ADT0004")
wf("adt_a08_update", "ADT^A08 patient information update, v2.4",
   [msh("ADT^A08^ADT_A01", "ADT0008", "2.4"), "EVN|A08|" + TS,
    "PID|1||MRN10003^^^NORTH_CLINIC^MR||Nguyen^Thi^B||19750101|F|||9 Pine Rd^^Lakeside^MI^49116||(269)555-0199~(269)555-0200",
    PV1],
   {"PID-13": "(269)555-0199", "PID-13[2]": "(269)555-0200", "PID-5.3": "B"},
   "ADT", "A08", "2.4", "ADT0008")
wf("adt_a28_add_person", "ADT^A28 add person information, v2.5",
   [msh("ADT^A28^ADT_A05", "ADT0028", "2.5"), "EVN|A28|" + TS,
    "PID|1||MRN10004^^^NORTH_CLINIC^MR||Okafor^Chidi||20010220|M", "PV1|1|N"],
   {"PID-5.1": "Okafor", "PID-8": "M", "PV1-2": "N", "MSH-9.3": "ADT_A05"},
   "ADT", "A28", "2.5", "ADT0028")
wf("adt_a31_update_person", "ADT^A31 update person information, v2.6",
   [msh("ADT^A31^ADT_A05", "ADT0031", "2.6"), "EVN|A31|" + TS,
    "PID|1||MRN10005^^^NORTH_CLINIC^MR||Kowalski^Jan||19600715|M|||3 Birch Ln^^Millbrook^NY^12545", "PV1|1|N"],
   {"PID-5.1": "Kowalski", "PID-11.5": "12545", "MSH-12": "2.6"},
   "ADT", "A31", "2.6", "ADT0031")
wf("adt_a40_merge", "ADT^A40 merge patient with MRG carrying the prior identifier",
   [msh("ADT^A40^ADT_A39", "ADT0040", "2.5.1"), "EVN|A40|" + TS,
    "PID|1||MRN10006^^^NORTH_CLINIC^MR||Brown^Casey", "MRG|MRN09999^^^NORTH_CLINIC^MR||ACCT777"],
   {"MRG-1.1": "MRN09999", "MRG-1.5": "MR", "MRG-3": "ACCT777", "PID-3.1": "MRN10006"},
   "ADT", "A40", "2.5.1", "ADT0040")

# --- ORU with SDOH screening -----------------------------------------------------------------
SPID = r"PID|1||MRN20001^^^NORTH_CLINIC^MR||Rivera^Jordan||19880830|U"
OBR_HVS = "OBR|1|ORD100|FIL100|88121-9^Hunger Vital Sign [HVS]^LN|||" + TS
wf("oru_r01_hunger_vital_sign_at_risk",
   "ORU^R01 Hunger Vital Sign panel 88121-9: Often true / Sometimes true -> 88124-3 At risk",
   [msh("ORU^R01^ORU_R01", "ORU0001", "2.5.1"), SPID, OBR_HVS,
    "OBX|1|CWE|88122-7^Within the past 12Mo we worried whether our food would run out before we got money to buy more^LN||LA28397-0^Often true^LN||||||F|||" + TS,
    "OBX|2|CWE|88123-5^Within the past 12Mo the food we bought just didn't last and we didn't have money to get more^LN||LA6729-3^Sometimes true^LN||||||F|||" + TS,
    "OBX|3|CWE|88124-3^Food insecurity risk [HVS]^LN||LA19952-3^At risk^LN||||||F|||" + TS],
   {"OBR-4.1": "88121-9", "OBX[1]-3.1": "88122-7", "OBX[1]-5.1": "LA28397-0", "OBX[1]-5.2": "Often true",
    "OBX[2]-5.2": "Sometimes true", "OBX[3]-3.1": "88124-3", "OBX[3]-5.1": "LA19952-3",
    "OBX[3]-5.2": "At risk", "OBX[3]-11": "F", "OBX[2]-2": "CWE"},
   "ORU", "R01", "2.5.1", "ORU0001")
wf("oru_r01_hunger_vital_sign_no_risk",
   "ORU^R01 Hunger Vital Sign: Never true twice -> 88124-3 No risk",
   [msh("ORU^R01^ORU_R01", "ORU0002", "2.5.1"), SPID, OBR_HVS,
    "OBX|1|CWE|88122-7^Worried food would run out^LN||LA28398-8^Never true^LN||||||F",
    "OBX|2|CWE|88123-5^Food didn't last^LN||LA28398-8^Never true^LN||||||F",
    "OBX|3|CWE|88124-3^Food insecurity risk [HVS]^LN||LA19983-8^No risk^LN||||||F"],
   {"OBX[1]-5.2": "Never true", "OBX[2]-5.1": "LA28398-8", "OBX[3]-5.1": "LA19983-8", "OBX[3]-5.2": "No risk",
    "OBX[3]-5.3": "LN"},
   "ORU", "R01", "2.5.1", "ORU0002")
wf("oru_r01_ahc_hrsn_housing",
   "ORU^R01 AHC HRSN screening: housing 71802-3 and transportation 93030-5",
   [msh("ORU^R01^ORU_R01", "ORU0003", "2.5.1"), SPID,
    "OBR|1|ORD101|FIL101|96777-8^Accountable health communities (AHC) health-related social needs screening (HRSN) tool^LN",
    "OBX|1|CWE|71802-3^Housing status^LN||LA31993-1^I have a steady place to live^LN||||||F",
    "OBX|2|CWE|93030-5^Has lack of transportation kept you from medical appointments, meetings, work, or from getting things needed for daily living^LN||LA32-8^No^LN||||||F",
    "NTE|1|P|Screened in clinic waiting room"],
   {"OBR-4.1": "96777-8", "OBX[1]-3.1": "71802-3", "OBX[1]-3.2": "Housing status",
    "OBX[1]-5.2": "I have a steady place to live", "OBX[2]-5.1": "LA32-8", "NTE-3": "Screened in clinic waiting room"},
   "ORU", "R01", "2.5.1", "ORU0003")
wf("oru_r01_multi_answer_repetitions",
   "ORU^R01 with a multi-select answer carried as OBX-5 repetitions",
   [msh("ORU^R01^ORU_R01", "ORU0004", "2.5.1"), SPID,
    "OBR|1|ORD102|FIL102|96777-8^AHC HRSN^LN",
    "OBX|1|CWE|96778-6^Problems with place where you live^LN||LA31996-4^Pests such as bugs, ants, or mice^LN~LA28580-1^Mold^LN||||||F"],
   {"OBX-5.2": "Pests such as bugs, ants, or mice", "OBX-5[2].1": "LA28580-1", "OBX-5[2].2": "Mold"},
   "ORU", "R01", "2.5.1", "ORU0004")
wf("oru_r01_numeric_and_units", "ORU^R01 with an NM observation and units",
   [msh("ORU^R01^ORU_R01", "ORU0005", "2.5.1"), SPID, "OBR|1|ORD103|FIL103|88121-9^HVS^LN",
    "OBX|1|NM|89555-7^How many days a week do you eat fewer meals^LN||3|d/wk^days per week^UCUM|||||F"],
   {"OBX-2": "NM", "OBX-5": "3", "OBX-6.1": "d/wk", "OBX-6.2": "days per week"},
   "ORU", "R01", "2.5.1", "ORU0005")

# --- REF ---------------------------------------------------------------------------------------
wf("ref_i12_food_referral", "REF^I12 referral to a community food program",
   [msh("REF^I12^REF_I12", "REF0001", "2.5.1"),
    "RF1|A^Accepted^HL70283|R^Routine^HL70280|SDOH^Social needs^LOCAL|||REFID001|20240315",
    "PRD|RP^Referring provider^HL70286|Welby^Marcus|1 Main St^^Springfield^IL",
    "PRD|RT^Referred to provider^HL70286|Springfield Food Pantry|77 Market St^^Springfield^IL",
    SPID, "DG1|1||Z59.41^Food insecurity^I10"],
   {"RF1-6": "REFID001", "RF1-1.1": "A", "PRD[2]-2": "Springfield Food Pantry", "PRD[2]-1.1": "RT",
    "DG1-3.1": "Z59.41", "DG1-3.2": "Food insecurity"},
   "REF", "I12", "2.5.1", "REF0001")

# --- Batches -------------------------------------------------------------------------------
b1 = [msh("ADT^A04^ADT_A01", "BAT0001", "2.5.1"), "EVN|A04", "PID|1||MRN30001^^^NORTH_CLINIC^MR||Lee^Sam"]
b2 = [msh("ADT^A08^ADT_A01", "BAT0002", "2.5.1"), "EVN|A08", "PID|1||MRN30002^^^NORTH_CLINIC^MR||Patel^Riya"]
b3 = [msh("ORU^R01^ORU_R01", "BAT0003", "2.5.1"), "PID|1||MRN30003^^^NORTH_CLINIC^MR||Young^Pat",
      "OBX|1|CWE|88124-3^Food insecurity risk^LN||LA19952-3^At risk^LN||||||F"]
segs = ["FHS|^~\\&|CLINIC_EHR|NORTH_CLINIC|SDOH_GW|GW_FAC|" + TS + "||FILE001",
        "BHS|^~\\&|CLINIC_EHR|NORTH_CLINIC|SDOH_GW|GW_FAC|" + TS + "||||BATCH001"] + b1 + b2 + ["BTS|2", "FTS|1"]
wf("batch_fhs_bhs_two_messages", "FHS/BHS batch of two ADT messages; values refer to the first message",
   segs, {"PID-5.1": "Lee", "MSH-10": "BAT0001"}, "ADT", "A04", "2.5.1", "BAT0001", batch=2)
segs = ["BHS|^~\\&|CLINIC_EHR|NORTH_CLINIC|SDOH_GW|GW_FAC|" + TS + "||||BATCH002"] + b1 + b2 + b3 + ["BTS|3"]
wf("batch_bhs_only_three_messages", "BHS/BTS batch without file header, three messages; values refer to the first",
   segs, {"PID-3.1": "MRN30001", "EVN-1": "A04"}, "ADT", "A04", "2.5.1", "BAT0001", batch=3)
segs = ["FHS|^~\\&|CLINIC_EHR|NORTH_CLINIC", "BHS|^~\\&|CLINIC_EHR|NORTH_CLINIC"] + b3 + ["BTS|1",
        "BHS|^~\\&|CLINIC_EHR|NORTH_CLINIC"] + b1 + ["BTS|1", "FTS|2"]
wf("batch_two_groups", "File with two BHS/BTS groups; values refer to the first message",
   segs, {"OBX-5.2": "At risk"}, "ORU", "R01", "2.5.1", "BAT0003", batch=2)

# --- Delimiters ----------------------------------------------------------------------------
wf("delims_hash_dollar", "Non-standard delimiters: field '#', encoding '$%*@'",
   [msh("ADT$A01$ADT_A01", "DLM0001", "2.5.1", app="CLINIC_EHR", fs="#", enc="$%*@").replace("|", "#"),
    "PID#1##MRN40001$$$NORTH_CLINIC$MR%ALT7$$$OTHER##Doe$Jane@Q#", "NTE#1##Costs *S* and *F* here"],
   {"MSH-1": "#", "MSH-2": "$%*@", "PID-3[2].1": "ALT7", "PID-5.2": "Jane@Q", "PID-5.2.2": "Q",
    "NTE-3": "Costs $ and # here", "MSH-9.2": "A01"},
   "ADT", "A01", "2.5.1", "DLM0001")
wf("delims_truncation_char_v27", "v2.7 MSH-2 with a fifth (truncation) character '#'",
   [msh("ADT^A01^ADT_A01", "DLM0002", "2.7", enc="^~\\&#"), "PID|1||MRN40002||Long\\P\\Name^Kim"],
   {"MSH-2": "^~\\&#", "PID-5.1": "Long#Name", "PID-5.2": "Kim"},
   "ADT", "A01", "2.7", "DLM0002")
wf("delims_bang_separators", "Field separator '!' and encoding '+=/:'",
   [msh("ORU+R01", "DLM0003", "2.4", app="CLINIC_EHR", fs="!", enc="+=/:").replace("|", "!"),
    "OBX!1!CWE!88124-3+Food insecurity risk+LN!!LA19952-3+At risk+LN=LA19983-8+No risk+LN"],
   {"OBX-5[2].2": "No risk", "OBX-3.1": "88124-3", "MSH-1": "!"},
   "ORU", "R01", "2.4", "DLM0003")

# --- Escapes -------------------------------------------------------------------------------
wf("escape_field_and_component", r"Escapes \F\ and \S\ decode to the field and component separators",
   [msh("ADT^A08^ADT_A01", "ESC0001", "2.5.1"), r"PID|1||MRN50001||O\F\Neil^Pat\S\Q", r"NTE|1||A\F\B\S\C"],
   {"PID-5.1": "O|Neil", "PID-5.2": "Pat^Q", "NTE-3": "A|B^C"},
   "ADT", "A08", "2.5.1", "ESC0001")
wf("escape_sub_rep_escape", "Escapes \\T\\, \\R\\ and \\E\\",
   [msh("ADT^A08^ADT_A01", "ESC0002", "2.5.1"), r"PID|1||MRN50002||Ames\T\Bo^Cy\R\Di", r"NTE|1||C:\E\path\E\file"],
   {"PID-5.1": "Ames&Bo", "PID-5.2": "Cy~Di", "NTE-3": "C:\\path\\file"},
   "ADT", "A08", "2.5.1", "ESC0002")
wf("escape_hex", r"Hex escapes \Xhh..\ including a multi-byte UTF-8 sequence",
   [msh("ADT^A08^ADT_A01", "ESC0003", "2.5.1", extra="||||||UNICODE UTF-8"), r"PID|1||MRN50003||\X4A\ones^Ren\XC3A9\e"],
   {"PID-5.1": "Jones", "PID-5.2": "Renée"},
   "ADT", "A08", "2.5.1", "ESC0003")
wf("escape_highlight", r"Highlighting \H\ ... \N\ is dropped from decoded text",
   [msh("ORU^R01^ORU_R01", "ESC0004", "2.5.1"), SPID, r"NTE|1||Patient is \H\at risk\N\ for food insecurity"],
   {"NTE-3": "Patient is at risk for food insecurity"},
   "ORU", "R01", "2.5.1", "ESC0004")
wf("escape_formatting_commands", r"Formatting commands like \.br\ and \.sp\ are kept verbatim",
   [msh("ORU^R01^ORU_R01", "ESC0005", "2.5.1"), SPID, r"NTE|1||Line one\.br\Line two\.sp2\end"],
   {"NTE-3": r"Line one\.br\Line two\.sp2\end"},
   "ORU", "R01", "2.5.1", "ESC0005")
wf("escape_unknown_kept", r"Unknown and malformed escapes (\Q\, odd hex) are kept verbatim",
   [msh("ORU^R01^ORU_R01", "ESC0006", "2.5.1"), SPID, r"NTE|1||a\Q\b\X4\c"],
   {"NTE-3": r"a\Q\b\X4\c"},
   "ORU", "R01", "2.5.1", "ESC0006")
wf("escape_custom_escape_char", "Escape sequences with a custom escape character '*'",
   [msh("ADT^A08", "ESC0007", "2.5.1", app="CLINIC_EHR", enc="^~*&"), "PID|1||MRN50007||Ng*F*Lo^A*E*B*T*C"],
   {"PID-5.1": "Ng|Lo", "PID-5.2": "A*B&C", "MSH-2": "^~*&"},
   "ADT", "A08", "2.5.1", "ESC0007")

# --- Character sets ------------------------------------------------------------------------
wf("charset_utf8_latin_names", "UNICODE UTF-8 with accented names",
   [msh("ADT^A04^ADT_A01", "CHS0001", "2.5.1", extra="||||||UNICODE UTF-8"),
    "PID|1||MRN60001||Müller^José||19700101|M|||Straße 5^^Köln"],
   {"PID-5.1": "Müller", "PID-5.2": "José", "PID-11.1": "Straße 5", "PID-11.3": "Köln", "MSH-18": "UNICODE UTF-8"},
   "ADT", "A04", "2.5.1", "CHS0001")
wf("charset_utf8_cjk", "UNICODE UTF-8 with a CJK name",
   [msh("ADT^A04^ADT_A01", "CHS0002", "2.6", extra="||||||UNICODE UTF-8"), "PID|1||MRN60002||山田^太郎"],
   {"PID-5.1": "山田", "PID-5.2": "太郎"},
   "ADT", "A04", "2.6", "CHS0002")
wf("charset_undeclared_utf8", "Empty MSH-18 with valid UTF-8 bytes: decoded as UTF-8",
   [msh("ADT^A04^ADT_A01", "CHS0003", "2.5.1"), "PID|1||MRN60003||Peña^Zoë"],
   {"PID-5.1": "Peña", "PID-5.2": "Zoë"},
   "ADT", "A04", "2.5.1", "CHS0003")
wf("charset_latin1_declared", "MSH-18 8859/1 with raw Latin-1 bytes",
   [msh("ADT^A04^ADT_A01", "CHS0004", "2.5.1", extra="||||||8859/1"), "PID|1||MRN60004||Müller^José||||||Straße 5"],
   {"PID-5.1": "Müller", "PID-5.2": "José", "PID-11": "Straße 5", "MSH-18": "8859/1"},
   "ADT", "A04", "2.5.1", "CHS0004", encoding="latin-1")
wf("charset_latin1_undeclared", "Empty MSH-18 with bytes that are not UTF-8: falls back to ISO 8859-1",
   [msh("ADT^A04^ADT_A01", "CHS0005", "2.3"), "PID|1||MRN60005||Gonçalves^Inês"],
   {"PID-5.1": "Gonçalves", "PID-5.2": "Inês"},
   "ADT", "A04", "2.3", "CHS0005", encoding="latin-1")
wf("charset_ascii", "MSH-18 ASCII",
   [msh("ADT^A04^ADT_A01", "CHS0006", "2.5.1", extra="||||||ASCII"), "PID|1||MRN60006||Plain^Ann"],
   {"PID-5.1": "Plain", "MSH-18": "ASCII"},
   "ADT", "A04", "2.5.1", "CHS0006")

# --- Empty vs null, terminators ----------------------------------------------------------------
wf("empty_vs_null", 'Empty fields are "" in values; the explicit null keeps its two quote characters',
   [msh("ADT^A08^ADT_A01", "NUL0001", "2.5.1"), 'PID|1||MRN70001||Null^Test||""||||""^^Town'],
   {"PID-7": '""', "PID-8": "", "PID-6": "", "PID-11.1": '""', "PID-11.3": "Town", "PID-30": ""},
   "ADT", "A08", "2.5.1", "NUL0001")
wf("terminator_lf", "Segments terminated by LF only",
   [msh("ADT^A01^ADT_A01", "TRM0001", "2.5.1"), "EVN|A01", "PID|1||MRN70002||Linefeed^Lou"],
   {"PID-5.1": "Linefeed"}, "ADT", "A01", "2.5.1", "TRM0001", term="\n")
wf("terminator_crlf", "Segments terminated by CRLF",
   [msh("ADT^A01^ADT_A01", "TRM0002", "2.5.1"), "EVN|A01", "PID|1||MRN70003||Crlf^Cy"],
   {"PID-5.2": "Cy"}, "ADT", "A01", "2.5.1", "TRM0002", term="\r\n")
wf("terminator_trailing_blank_lines", "Trailing empty lines after the last segment are ignored",
   [msh("ADT^A01^ADT_A01", "TRM0003", "2.5.1"), "PID|1||MRN70004||Blank^Bea"],
   {"PID-5.1": "Blank"}, "ADT", "A01", "2.5.1", "TRM0003", tail="\r\n\r\n")
wf("terminator_no_final", "Last segment without a terminator",
   [msh("ADT^A01^ADT_A01", "TRM0004", "2.5.1"), "PID|1||MRN70005||Final^Fay"],
   {"PID-5.2": "Fay"}, "ADT", "A01", "2.5.1", "TRM0004", term="\r")
# strip the final CR of the last case so it really has none
name, data, exp = WELLFORMED[-1]
WELLFORMED[-1] = (name, data[:-1], exp)

# --- Access paths ------------------------------------------------------------------------------
wf("paths_subcomponents_and_occurrences", "Subcomponents (PID-5.1.2), segment occurrences and MSH-1/MSH-2",
   [msh("ORU^R01^ORU_R01", "PTH0001", "2.5.1"), "PID|1||MRN80001||de Vries&de&Vries^Anouk", "OBR|1",
    "OBX|1|ST|A^first||one", "OBX|2|ST|B^second||two", "OBX|3|ST|C^third||three"],
   {"PID-5.1": "de Vries&de&Vries", "PID-5.1.1": "de Vries", "PID-5.1.2": "de", "PID-5.1.3": "Vries",
    "OBX[3]-5": "three", "OBX[2]-3.2": "second", "MSH-1": "|", "MSH-2": "^~\\&", "OBX[4]-5": ""},
   "ORU", "R01", "2.5.1", "PTH0001")
wf("enhanced_ack_requested", "MSH-15 AL / MSH-16 NE request enhanced acknowledgment mode",
   [msh("ADT^A04^ADT_A01", "ENH0001", "2.5.1", extra="|||AL|NE"), "PID|1||MRN80002||Mode^Enh"],
   {"MSH-15": "AL", "MSH-16": "NE"}, "ADT", "A04", "2.5.1", "ENH0001")
wf("zsegment_custom", "A site-defined Z segment between standard segments",
   [msh("ADT^A04^ADT_A01", "ZSG0001", "2.5.1"), "PID|1||MRN80003||Zed^Zia", "ZSD|1|FOOD^Food insecure^LOCAL"],
   {"ZSD-2.2": "Food insecure"}, "ADT", "A04", "2.5.1", "ZSG0001")

# --- Versions ----------------------------------------------------------------------------------
for v in ["2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.7.1", "2.8", "2.8.1", "2.8.2"]:
    tag = v.replace(".", "_")
    mt = "ADT^A01" if v in ("2.2", "2.3") else "ADT^A01^ADT_A01"
    wf("version_" + tag, f"Minimal ADT^A01 declaring version {v}",
       [msh(mt, "VER" + tag, v), "EVN|A01|" + TS, "PID|1||MRNV" + tag + "||Version^Vic"],
       {"MSH-12": v, "PID-5.1": "Version"}, "ADT", "A01", v, "VER" + tag)

# --- Malformed -----------------------------------------------------------------------------
MALFORMED = []


def mf(name, description, data, answer, code, loc, layer="message", **extra):
    if isinstance(data, str):
        data = data.encode("utf-8")
    exp = {"description": description, "layer": layer, "answer": answer, "err_code": code, "err_location": loc}
    exp.update(extra)
    MALFORMED.append((name, data, exp))


def good(ctl="BAD0001", ver="2.5.1", extra="", mtype="ADT^A01^ADT_A01"):
    return msh(mtype, ctl, ver, extra=extra)


BODY = "\rEVN|A01\rPID|1||MRN90001||Bad^Case\r"
mf("empty_input", "Zero bytes", b"", "AR", 100, "MSH")
mf("whitespace_only", "Only spaces and blank lines", " \r\n  \r\n", "AR", 100, "MSH")
mf("no_msh", "Starts with PID; no MSH", "PID|1||MRN90001||No^Header\r", "AR", 100, "MSH")
mf("binary_garbage", "Random binary bytes", bytes([0x89, 0x50, 0x4E, 0x47, 0xFF, 0x00, 0x13, 0x37, 0xDE, 0xAD]),
   "AR", 100, "MSH")
mf("nul_bytes_only", "Only NUL bytes", b"\x00" * 16, "AR", 100, "MSH")
mf("nul_in_body", "A NUL byte inside PID-5 of an otherwise valid message",
   (good("BAD0002") + "\rPID|1||MRN90002||Nu\x00ll^Ned\r"), "AE", 102, "PID-5.1")
mf("msh1_alphanumeric", "MSH-1 is a letter", good("BAD0003").replace("|", "X"), "AR", 102, "MSH-1")
mf("msh_only_id", "Just 'MSH' with nothing after it", "MSH\r", "AR", 101, "MSH-1")
mf("msh2_duplicate_delimiters", "MSH-2 repeats the component separator",
   good("BAD0005").replace("^~\\&", "^^\\&", 1) + BODY, "AR", 102, "MSH-2")
mf("msh2_too_short", "MSH-2 has only three characters", good("BAD0006").replace("^~\\&", "^~\\", 1) + BODY,
   "AR", 102, "MSH-2")
mf("msh2_too_long", "MSH-2 has six characters", good("BAD0007").replace("^~\\&", "^~\\&#!", 1) + BODY,
   "AR", 102, "MSH-2")
mf("msh2_field_separator_reused", "MSH-2 contains the field separator character",
   good("BAD0008").replace("^~\\&", "^~|&", 1) + BODY, "AR", 102, "MSH-2")
mf("msh9_missing", "MSH-9 empty", good("BAD0009", mtype="") + BODY, "AR", 101, "MSH-9")
mf("msh9_without_trigger", "MSH-9 has a type but no trigger event", good("BAD0010", mtype="ADT") + BODY,
   "AR", 101, "MSH-9.2")
mf("msh9_lowercase_type", "MSH-9.1 is not an uppercase code", good("BAD0011", mtype="adt^A01") + BODY,
   "AR", 200, "MSH-9.1")
mf("msh9_bad_trigger", "MSH-9.2 is not a 3-character code", good("BAD0012", mtype="ADT^A1") + BODY,
   "AR", 201, "MSH-9.2")
mf("msh10_missing", "MSH-10 (control id) empty", good("") + BODY, "AR", 101, "MSH-10")
mf("msh10_missing_enhanced", "MSH-10 empty in enhanced mode (MSH-15 AL): commit reject",
   good("", extra="|||AL|AL") + BODY, "CR", 101, "MSH-10")
mf("msh11_missing", "MSH-11 (processing id) empty",
   good("BAD0014").replace("|P|2.5.1", "||2.5.1") + BODY, "AR", 101, "MSH-11")
mf("msh11_unsupported", "MSH-11 is not P, D or T",
   good("BAD0015").replace("|P|2.5.1", "|X|2.5.1") + BODY, "AR", 202, "MSH-11")
mf("msh12_missing", "MSH-12 (version) empty", good("BAD0016", ver="") + BODY, "AR", 101, "MSH-12")
mf("msh12_version_3_0", "MSH-12 is 3.0", good("BAD0017", ver="3.0") + BODY, "AR", 203, "MSH-12")
mf("msh12_version_2_1", "MSH-12 is 2.1 (older than supported)", good("BAD0018", ver="2.1") + BODY,
   "AR", 203, "MSH-12")
mf("msh15_bad_value", "MSH-15 is not a table 0155 value", good("BAD0019", extra="|||XX") + BODY,
   "AR", 103, "MSH-15")
mf("msh18_unknown_charset", "MSH-18 names an unsupported character set",
   good("BAD0020", extra="||||||KLINGON-8") + BODY, "AR", 103, "MSH-18")
mf("msh18_unknown_charset_enhanced", "Unsupported MSH-18 in enhanced mode: commit reject",
   good("BAD0021", extra="|||AL|NE||EBCDIC") + BODY, "CR", 103, "MSH-18")
mf("utf8_invalid_in_body", "MSH-18 UNICODE UTF-8 but PID-5.1 holds a Latin-1 byte",
   good("BAD0022", extra="||||||UNICODE UTF-8").encode() + b"\rPID|1||MRN90022||M\xfcller^Hans\r", "AE", 102,
   "PID-5.1")
mf("utf8_invalid_in_body_enhanced", "Invalid UTF-8 in OBX-5 with MSH-15 AL: commit error",
   good("BAD0023", extra="|||AL|NE||UNICODE UTF-8").encode() + b"\rOBX|1|ST|x^y^LN||caf\xe9\r", "CE", 102,
   "OBX-5")
mf("utf8_invalid_in_msh", "Invalid UTF-8 inside MSH-4 under UNICODE UTF-8",
   msh("ADT^A01^ADT_A01", "BAD0024", "2.5.1", fac="CL\xc3NIC", extra="||||||UNICODE UTF-8").encode("latin-1")
   + b"\rPID|1\r", "AR", 102, "MSH-4")
mf("segment_id_lowercase", "Segment id in lowercase", good("BAD0025") + "\rpid|1||MRN90025\r", "AE", 100, "pid")
mf("segment_id_two_chars", "Segment id with two characters", good("BAD0026") + "\rPI|1||MRN90026\r",
   "AE", 100, "PI")
mf("segment_id_four_chars", "Segment id with four characters", good("BAD0027") + "\rPIDX|1\r", "AE", 100, "PID")
mf("segment_id_too_short_v23", "Two-character segment id in a v2.3 message (ERR-1 style NAK)",
   good("BAD0028", ver="2.3", mtype="ADT^A08") + "\rZZ\r", "AE", 100, "ZZ")
mf("msh_truncated", "MSH cut off after MSH-3", "MSH|^~\\&|CLINIC_EHR\r", "AR", 101, "MSH-9")
mf("two_messages_concatenated", "A second MSH inside one payload",
   good("BAD0030") + BODY + good("BAD0031") + BODY, "AE", 100, "MSH[2]")
mf("batch_segment_inside_message", "BTS inside a single message", good("BAD0032") + BODY + "BTS|1\r",
   "AE", 100, "BTS")
bm = msh("ADT^A04^ADT_A01", "BAD0040", "2.5.1") + "\rPID|1||MRN90040||Batch^Bo\r"
mf("batch_wrong_bts_count", "BTS-1 says 3 but the batch holds 1 message",
   "BHS|^~\\&|CLINIC_EHR|NORTH_CLINIC\r" + bm + "BTS|3\r", "AR", 102, "BTS-1")
mf("batch_without_bhs", "FHS followed directly by a message, no BHS",
   "FHS|^~\\&|CLINIC_EHR|NORTH_CLINIC\r" + bm + "FTS|1\r", "AR", 100, "BHS")
mf("batch_wrong_fts_count", "FTS-1 says 2 batches but the file holds 1",
   "FHS|^~\\&|CLINIC_EHR\rBHS|^~\\&|CLINIC_EHR\r" + bm + "BTS|1\rFTS|2\r", "AR", 102, "FTS-1")

# Frame layer: raw socket bytes with MLLP framing (start 0x0B, end 0x1C 0x0D); run by the MLLP tests.
SB, EB = b"\x0b", b"\x1c\x0d"
valid = (msh("ADT^A01^ADT_A01", "FRM0001", "2.5.1") + "\rPID|1||MRNF0001||Frame^Fran\r").encode()
mf("frame_truncated_eof", "Start block and half a message, then EOF: connection closed, nothing stored",
   SB + valid[: len(valid) // 2], "close", None, None, layer="frame")
mf("frame_missing_end_block", "Complete message but no end block; the peer stays silent: closed after the read timeout",
   SB + valid, "close", None, None, layer="frame")
mf("frame_nested_start_block", "A start block inside a frame: the partial frame is discarded and the following complete frame (a valid message) is answered AA",
   SB + valid[:40] + SB + valid + EB, "AA", None, None, layer="frame")
mf("frame_garbage_before_start", "Garbage bytes before the start block of a valid framed message: garbage ignored, message answered AA",
   b"GET / HTTP/1.1\r\n\r\n" + SB + valid + EB, "AA", None, None, layer="frame")
mf("frame_oversize", "Oversize frame: the test generates a frame larger than the listener's limit (more than 1 MiB) at run time instead of storing it; this file holds only its first bytes",
   SB + valid, "close", None, None, layer="frame", generate_oversize=True)
mf("frame_empty", "An empty frame (start block immediately followed by end block): nothing to answer",
   SB + EB, "none", None, None, layer="frame")
mf("frame_invalid_message", "A well-framed payload whose MSH-12 is unsupported: answered AR",
   SB + good("FRM0002", ver="9.9").encode() + b"\rPID|1\r" + EB, "AR", 203, "MSH-12", layer="frame")


def write_all():
    for d in (WF, MF):
        if os.path.isdir(d):
            shutil.rmtree(d)
        os.makedirs(d)
    for name, data, exp in WELLFORMED:
        with open(os.path.join(WF, name + ".hl7"), "wb") as f:
            f.write(data)
        with open(os.path.join(WF, name + ".expected.json"), "w", encoding="utf-8") as f:
            json.dump(exp, f, ensure_ascii=False, indent=2)
            f.write("\n")
    for name, data, exp in MALFORMED:
        with open(os.path.join(MF, name + ".bin"), "wb") as f:
            f.write(data)
        with open(os.path.join(MF, name + ".expected.json"), "w", encoding="utf-8") as f:
            json.dump(exp, f, ensure_ascii=False, indent=2)
            f.write("\n")
    print(f"{len(WELLFORMED)} wellformed, {len(MALFORMED)} malformed")


if __name__ == "__main__":
    write_all()
