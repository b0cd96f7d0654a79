//! `baton flash --batch devices.csv`: one row a device, `name,labels,arch`.
//!
//! Labels are `k=v;k=v`, or `"k=v,k=v"` quoted; the arch column may be empty (then
//! `--arch` or the image decides). A first row `name,labels,arch` is a header; lines
//! starting with `#` are comments.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use super::arch::Arch;
use super::settings;
use super::FlashError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Device {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub arch: Option<Arch>,
}

pub(super) fn read(path: &Path) -> Result<Vec<Device>, FlashError> {
    let text = std::fs::read(path).map_err(|source| FlashError::Read {
        path: path.display().to_string(),
        error: source,
    })?;
    parse(&text).map_err(|e| FlashError::Invalid(format!("{}: {e}", path.display())))
}

pub(super) fn parse(text: &[u8]) -> Result<Vec<Device>, String> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .trim(csv::Trim::All)
        .comment(Some(b'#'))
        .from_reader(text);
    let mut out: Vec<Device> = Vec::new();
    let mut names = BTreeSet::new();
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| format!("not CSV: {e}"))?;
        let line = record.position().map_or(i as u64 + 1, |p| p.line());
        let field = |n: usize| record.get(n).unwrap_or("");
        if record.iter().all(str::is_empty) {
            continue;
        }
        if out.is_empty() && field(0).eq_ignore_ascii_case("name") {
            continue;
        }
        if record.len() > 3 {
            return Err(format!(
                "line {line}: {} columns; expected name,labels,arch (quote labels that contain commas)",
                record.len()
            ));
        }
        let name = settings::node_name(field(0)).map_err(|e| format!("line {line}: {e}"))?;
        if !names.insert(name.clone()) {
            return Err(format!("line {line}: node {name} is listed twice"));
        }
        let labels = settings::labels(field(1)).map_err(|e| format!("line {line}: {e}"))?;
        let arch = match field(2) {
            "" => None,
            a => Some(Arch::parse(a).ok_or_else(|| {
                format!("line {line}: unknown architecture {a:?} (arm64, armv7 or armv6)")
            })?),
        };
        out.push(Device { name, labels, arch });
    }
    if out.is_empty() {
        return Err("no devices listed (one line a device: name,labels,arch)".into());
    }
    Ok(out)
}
