//! `--register-with-taints key=value:Effect,...`: kubelet's flag, parsed into the taints the
//! Hello carries. The coordinator takes them when it first sees the node; after that
//! `baton taint node` owns the node's taints (docs/operations.md, "Taints").

use baton_proto::{BString, NodeTaint, TaintEffect};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TaintFlagError {
    #[error("taint {0:?} is not key[=value]:Effect")]
    Shape(String),
    #[error(
        "taint {arg:?}: unknown effect {effect:?} (NoSchedule, PreferNoSchedule or NoExecute)"
    )]
    Effect { arg: String, effect: String },
    #[error("taint {0:?}: the key or value is too long")]
    TooLong(String),
    #[error("at most 16 taints can be registered")]
    TooMany,
}

/// Parses each `key[=value]:Effect` (empty entries, from a trailing comma, are skipped).
pub fn parse_register_taints(args: &[String]) -> Result<Vec<NodeTaint>, TaintFlagError> {
    let mut out = Vec::new();
    for arg in args.iter().map(|a| a.trim()).filter(|a| !a.is_empty()) {
        let shape = || TaintFlagError::Shape(arg.to_owned());
        let (kv, effect) = arg.rsplit_once(':').ok_or_else(shape)?;
        let effect = match effect {
            "NoSchedule" => TaintEffect::NoSchedule,
            "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
            "NoExecute" => TaintEffect::NoExecute,
            other => {
                return Err(TaintFlagError::Effect {
                    arg: arg.to_owned(),
                    effect: other.to_owned(),
                })
            }
        };
        let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
        if key.is_empty() {
            return Err(shape());
        }
        let too_long = || TaintFlagError::TooLong(arg.to_owned());
        out.push(NodeTaint {
            key: BString::new(key).map_err(|_| too_long())?,
            value: BString::new(value).map_err(|_| too_long())?,
            effect,
        });
    }
    if out.len() > 16 {
        return Err(TaintFlagError::TooMany);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &[&str]) -> Vec<String> {
        s.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn taints_parse_as_kubelet_spells_them() {
        let t = parse_register_taints(&args(&["dedicated=cams:NoSchedule", "edge:NoExecute", ""]))
            .unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            (t[0].key.as_str(), t[0].value.as_str(), t[0].effect),
            ("dedicated", "cams", TaintEffect::NoSchedule)
        );
        assert_eq!(
            (t[1].key.as_str(), t[1].value.as_str(), t[1].effect),
            ("edge", "", TaintEffect::NoExecute)
        );
        assert_eq!(
            parse_register_taints(&args(&["gpu"])),
            Err(TaintFlagError::Shape("gpu".into()))
        );
        assert!(matches!(
            parse_register_taints(&args(&["gpu:Never"])),
            Err(TaintFlagError::Effect { .. })
        ));
        assert!(parse_register_taints(&args(&["=x:NoSchedule"])).is_err());
        let many: Vec<String> = (0..17).map(|i| format!("k{i}:NoSchedule")).collect();
        assert_eq!(parse_register_taints(&many), Err(TaintFlagError::TooMany));
    }
}
