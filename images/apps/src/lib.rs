//! The example todo app for Baton's images: a `todo-app` web frontend and a `kv` store with
//! a primary and a replica mode, standing in for the seed's frontend + redis master/slave.
//! Std only; see images/README.md for the KV protocol and how to run them.

pub mod http;
pub mod json;
pub mod kv;
pub mod net;
pub mod todo;

/// Reads `--flag value` / `--flag=value` style arguments with environment fallbacks, for
/// two binaries too small to justify an argument-parsing crate.
pub mod args {
    use std::collections::HashMap;

    /// Parses `args` (without the program name) against the flags that take a value and
    /// the boolean ones. Unknown flags and stray words are errors.
    pub fn parse(
        args: impl IntoIterator<Item = String>,
        valued: &[&str],
        boolean: &[&str],
    ) -> Result<HashMap<String, String>, String> {
        let mut out = HashMap::new();
        let mut it = args.into_iter();
        while let Some(a) = it.next() {
            let Some(flag) = a.strip_prefix("--") else {
                return Err(format!("unexpected argument {a:?}"));
            };
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag.to_owned(), None),
            };
            if boolean.contains(&name.as_str()) && inline.is_none() {
                out.insert(name, "true".into());
            } else if valued.contains(&name.as_str()) {
                let v = match inline {
                    Some(v) => v,
                    None => it.next().ok_or_else(|| format!("--{name} needs a value"))?,
                };
                out.insert(name, v);
            } else {
                return Err(format!("unknown flag --{name}"));
            }
        }
        Ok(out)
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn flags_and_errors() {
            let a = |v: &[&str]| {
                super::parse(
                    v.iter().map(|s| s.to_string()),
                    &["role", "port"],
                    &["help"],
                )
            };
            let m = a(&["--role", "replica", "--port=7000", "--help"]).unwrap();
            assert_eq!(
                (m["role"].as_str(), m["port"].as_str(), m["help"].as_str()),
                ("replica", "7000", "true")
            );
            assert!(a(&["--role"]).unwrap_err().contains("needs a value"));
            assert!(a(&["--nope"]).unwrap_err().contains("unknown flag"));
            assert!(a(&["stray"]).unwrap_err().contains("unexpected argument"));
        }
    }
}
