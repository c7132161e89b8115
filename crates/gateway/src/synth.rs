//! Synthetic but realistic HL7 v2 messages (fake patients only) for the load tool and end-to-end tests.

/// Makes a stream of messages with unique control ids `<prefix>-<n>`.
pub struct MessageFactory {
    prefix: String,
    next: u64,
    seed: u64,
}

const FAMILY: &[&str] =
    &["Rivera", "Nguyen", "Okafor", "Smith", "Müller", "García", "Kowalski", "Haddad", "Yamada", "Johnson"];
const GIVEN: &[&str] = &["Ana", "Minh", "Chidi", "Mary", "José", "Lena", "Piotr", "Omar", "Yuki", "DeShawn"];
const RACE: &[(&str, &str)] = &[
    ("2106-3", "White"),
    ("2054-5", "Black or African American"),
    ("2028-9", "Asian"),
    ("1002-5", "American Indian or Alaska Native"),
    ("2076-8", "Native Hawaiian or Other Pacific Islander"),
];
const LANGUAGE: &[(&str, &str)] = &[("en", "English"), ("es", "Spanish"), ("vi", "Vietnamese"), ("zh", "Chinese")];
const COUNTY: &[&str] = &["Multnomah", "Lane", "Marion", "Jackson", "Deschutes"];
const HVS_ANSWERS: &[(&str, &str)] =
    &[("LA28397-0", "Often true"), ("LA6729-3", "Sometimes true"), ("LA28398-8", "Never true")];

impl MessageFactory {
    pub fn new(prefix: impl Into<String>, seed: u64) -> Self {
        MessageFactory { prefix: prefix.into(), next: 0, seed }
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        // xorshift: fast, deterministic per seed, good enough to vary fields.
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        &items[(self.seed % items.len() as u64) as usize]
    }

    /// The next message: mostly ADT and screening ORU, some referrals, as a clinic interface sends them.
    pub fn next_message(&mut self) -> (String, Vec<u8>) {
        self.next += 1;
        let n = self.next;
        let control_id = format!("{}-{n}", self.prefix);
        let kind = n % 10;
        let text = match kind {
            0..=3 => self.adt(&control_id, ["A01", "A04", "A08", "A28"][kind as usize], n),
            4..=7 => self.oru_hunger_vital_sign(&control_id, n),
            _ => self.ref_i12(&control_id, n),
        };
        (control_id, text.into_bytes())
    }

    fn header(&self, control_id: &str, message_type: &str, n: u64) -> String {
        let ts = format!("20261123{:02}{:02}{:02}", (n / 3600) % 24, (n / 60) % 60, n % 60);
        format!(
            "MSH|^~\\&|EPIC|CLINIC-{}|SDOH-GATEWAY|SDOH-HUB|{ts}||{message_type}|{control_id}|P|2.5.1|||||UNICODE UTF-8\r",
            n % 4
        )
    }

    /// The `n`th ORU^R01 Hunger Vital Sign screening on its own patient (`MRN<n>`), with control id
    /// `<prefix>-<n>`. Unlike [`MessageFactory::next_message`] the caller numbers the messages, so several
    /// factories (one per connection) fed from one shared counter screen distinct patients, one screening each.
    pub fn oru_screening(&mut self, n: u64) -> (String, Vec<u8>) {
        let control_id = format!("{}-{n}", self.prefix);
        let mut m = self.header(&control_id, "ORU^R01^ORU_R01", n);
        m.push_str(&self.pid_with_mrn(n, n));
        self.hvs_order(&mut m, n);
        (control_id, m.into_bytes())
    }

    fn pid(&mut self, n: u64) -> String {
        self.pid_with_mrn(n, n % 50_000)
    }

    fn pid_with_mrn(&mut self, n: u64, mrn: u64) -> String {
        let family = *self.pick(FAMILY);
        let given = *self.pick(GIVEN);
        let (race, race_text) = *self.pick(RACE);
        let (lang, lang_text) = *self.pick(LANGUAGE);
        let county = *self.pick(COUNTY);
        let sex = if n.is_multiple_of(2) { "F" } else { "M" };
        let year = 1940 + n % 70;
        format!(
            "PID|1||MRN{mrn:08}^^^CLINIC^MR||{family}^{given}^Q^^^^L||{year}0{month}1{day}|{sex}||{race}^{race_text}^CDCREC|{street} Main St^^Portland^OR^972{zip:02}^USA^H^^{county}||^PRN^PH^^1^503^555{phone:04}||{lang}^{lang_text}^ISO639|||||||2186-5^Not Hispanic or Latino^CDCREC\r",
            month = 1 + n % 9,
            day = n % 9,
            street = 100 + n % 900,
            zip = n % 100,
            phone = n % 10_000,
        )
    }

    fn adt(&mut self, control_id: &str, event: &str, n: u64) -> String {
        let structure = if event == "A28" { "ADT_A05" } else { "ADT_A01" };
        let mut m = self.header(control_id, &format!("ADT^{event}^{structure}"), n);
        m.push_str(&format!("EVN|{event}|20261123080000\r"));
        m.push_str(&self.pid(n));
        m.push_str(&format!("PV1|1|O|CLINIC^^^MAIN||||1234^Welby^Marcus^^^Dr^MD|||||||||||V{:08}|||||||||||||||||||||||||20261123080000\r", n));
        m.push_str(&format!(
            "IN1|1|MCD^Medicaid|OHP|Oregon Health Plan|||||||||||||||||||||||||||||||||||||||||||||||||MCD{:07}\r",
            n % 1_000_000
        ));
        m
    }

    fn oru_hunger_vital_sign(&mut self, control_id: &str, n: u64) -> String {
        let mut m = self.header(control_id, "ORU^R01^ORU_R01", n);
        m.push_str(&self.pid(n));
        self.hvs_order(&mut m, n);
        m
    }

    /// OBR + two OBX rows of a Hunger Vital Sign screening, appended to `m`.
    fn hvs_order(&mut self, m: &mut String, n: u64) {
        m.push_str(&format!("OBR|1|ORD{n:08}|FIL{n:08}|88121-9^Hunger Vital Sign [HVS]^LN|||20261123080000\r"));
        let (a1, t1) = *self.pick(HVS_ANSWERS);
        let (a2, t2) = *self.pick(HVS_ANSWERS);
        m.push_str(&format!("OBX|1|CWE|88122-7^Within the past 12 months we worried whether our food would run out before we got money to buy more^LN||{a1}^{t1}^LN||||||F|||20261123080000\r"));
        m.push_str(&format!("OBX|2|CWE|88123-5^Within the past 12 months the food we bought just didn't last and we didn't have money to get more^LN||{a2}^{t2}^LN||||||F|||20261123080000\r"));
    }

    fn ref_i12(&mut self, control_id: &str, n: u64) -> String {
        let mut m = self.header(control_id, "REF^I12^REF_I12", n);
        m.push_str(&format!("RF1|P^Pending^HL70283|R^Routine^HL70280|SO^Social services^HL70281|||REF{n:08}\r"));
        m.push_str("PRD|RP|Welby^Marcus^^^Dr|||||1234^^^NPI\r");
        m.push_str("PRD|RT|Community Food Bank^^^^|||||CBO-FOODBANK^^^LOCAL\r");
        m.push_str(&self.pid(n));
        m.push_str("DG1|1||Z59.41^Food insecurity^I10||20261123\r");
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_ids_are_unique_and_messages_vary() {
        let mut f = MessageFactory::new("t", 42);
        let mut ids = std::collections::HashSet::new();
        let mut types = std::collections::HashSet::new();
        for _ in 0..100 {
            let (id, bytes) = f.next_message();
            assert!(ids.insert(id));
            let text = String::from_utf8(bytes).unwrap();
            assert!(text.starts_with("MSH|^~\\&|"));
            assert!(text.ends_with('\r'));
            types.insert(text.split('|').nth(8).unwrap().to_owned());
        }
        assert_eq!(types.len(), 6, "four ADT events, ORU and REF: {types:?}");
    }

    #[test]
    fn screenings_are_oru_on_distinct_patients() {
        let mut a = MessageFactory::new("a", 1);
        let mut b = MessageFactory::new("b", 2);
        let mut mrns = std::collections::HashSet::new();
        for n in 1..=200u64 {
            let f = if n.is_multiple_of(2) { &mut a } else { &mut b };
            let (id, bytes) = f.oru_screening(n);
            assert!(id.ends_with(&format!("-{n}")));
            let text = String::from_utf8(bytes).unwrap();
            assert_eq!(text.split('|').nth(8), Some("ORU^R01^ORU_R01"));
            let pid = text.split('\r').find(|s| s.starts_with("PID|")).unwrap();
            assert!(mrns.insert(pid.split('|').nth(3).unwrap().to_owned()), "patient repeated at {n}");
            assert_eq!(text.matches("\rOBX|").count(), 2);
        }
        // The mixed stream is unchanged: patient numbers still wrap at 50,000.
        let mut f = MessageFactory::new("t", 42);
        let text = String::from_utf8(f.next_message().1).unwrap();
        assert!(text.contains("PID|1||MRN00000001^^^CLINIC^MR|"));
    }
}
