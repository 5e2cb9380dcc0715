//! Secret values kept out of what ferry writes or prints: a release_command's output,
//! its log, history records and the errors made from them. ferry knows the values (the
//! secrets, and `[env]` values under names that look secret), so it replaces each with
//! `[redacted:NAME]` wherever it appears.

use std::borrow::Cow;
use std::collections::BTreeMap;

/// Values shorter than this are left alone: redacting `1` or `on` would garble every line
/// and hide nothing worth hiding.
const SHORTEST: usize = 4;

/// Parts of a variable name that mark its value as secret.
const SECRET_NAMES: &[&str] =
    &["KEY", "SECRET", "TOKEN", "PASSWORD", "PASSWD", "PASS", "CREDENTIAL", "PRIVATE", "AUTH"];

/// What to replace, longest value first (so a value containing another is replaced whole).
#[derive(Default)]
pub struct Redactor {
    needles: Vec<(String, String)>,
}

impl Redactor {
    /// Every secret's value, and the values of `env` keys that look secret. A URL's
    /// password (`scheme://user:pass@host`) in any value is redacted on its own too, and
    /// each line of a multi-line value (output is redacted a line at a time).
    pub fn new(secrets: &BTreeMap<String, String>, env: &BTreeMap<String, String>) -> Self {
        let mut needles = Vec::new();
        let mut add = |key: &str, value: &str| {
            for part in std::iter::once(value).chain(value.lines()) {
                if part.trim().len() >= SHORTEST {
                    needles.push((part.to_string(), key.to_string()));
                }
            }
        };
        for (key, value) in secrets {
            add(key, value);
        }
        for (key, value) in env {
            if looks_secret(key) {
                add(key, value);
            }
        }
        for (key, value) in secrets.iter().chain(env) {
            if let Some(password) = url_password(value) {
                add(key, password);
            }
        }
        needles.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
        needles.dedup_by(|a, b| a.0 == b.0);
        Self { needles }
    }

    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    pub fn redact<'a>(&self, text: &'a str) -> Cow<'a, str> {
        let mut text = Cow::Borrowed(text);
        for (value, key) in &self.needles {
            if text.contains(value.as_str()) {
                text = Cow::Owned(text.replace(value.as_str(), &format!("[redacted:{key}]")));
            }
        }
        text
    }

    /// Redacts every string in a JSON value (a history record), keys included.
    pub fn redact_json(&self, value: &mut serde_json::Value) {
        match value {
            serde_json::Value::String(s) => {
                if let Cow::Owned(clean) = self.redact(s) {
                    *s = clean;
                }
            }
            serde_json::Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            serde_json::Value::Object(map) => {
                let fields = std::mem::take(map);
                for (key, mut v) in fields {
                    self.redact_json(&mut v);
                    map.insert(self.redact(&key).into_owned(), v);
                }
            }
            _ => {}
        }
    }
}

fn looks_secret(name: &str) -> bool {
    let name = name.to_ascii_uppercase();
    name == "DATABASE_URL" || SECRET_NAMES.iter().any(|part| name.contains(part))
}

/// The password of `scheme://user:password@host...`, if the value is such a URL.
fn url_password(value: &str) -> Option<&str> {
    let (_, rest) = value.split_once("://")?;
    let userinfo = &rest[..rest.find('@')?];
    let (_, password) = userinfo.split_once(':')?;
    (!password.contains('/')).then_some(password)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
    }

    #[test]
    fn secrets_and_secret_looking_env_values_are_replaced_by_their_name() {
        let r = Redactor::new(
            &map(&[("API_TOKEN", "tok\"en\\42"), ("FLAG", "on")]),
            &map(&[("DB_PASSWORD", "s3cr3t-env"), ("REGION_NAME", "sydney")]),
        );
        let out = r.redact("t=tok\"en\\42 p=s3cr3t-env flag=on region=sydney");
        assert_eq!(out, "t=[redacted:API_TOKEN] p=[redacted:DB_PASSWORD] flag=on region=sydney");
    }

    #[test]
    fn a_url_password_and_each_line_of_a_key_are_redacted_on_their_own() {
        let r = Redactor::new(
            &map(&[("PEM", "-----BEGIN-----\nMIIabcdef\n-----END-----")]),
            &map(&[("UPSTREAM", "postgres://app:pw-1234@db:5432/app")]),
        );
        assert_eq!(r.redact("line MIIabcdef"), "line [redacted:PEM]");
        assert_eq!(r.redact("connecting as app:pw-1234@db"), "connecting as app:[redacted:UPSTREAM]@db");
        assert!(matches!(r.redact("nothing here"), Cow::Borrowed(_)));
    }

    #[test]
    fn json_strings_are_redacted_after_decoding() {
        let r = Redactor::new(&map(&[("K", "va\"lue")]), &BTreeMap::new());
        let mut v = serde_json::json!({"message": "saw va\"lue", "n": 1, "list": ["va\"lue"]});
        r.redact_json(&mut v);
        assert_eq!(v, serde_json::json!({"message": "saw [redacted:K]", "n": 1, "list": ["[redacted:K]"]}));
    }
}
