//! Which image suits this machine: the host platform and the index resolver.
//!
//! oci-client's built-in resolvers compare only os and architecture. That is not enough on
//! 32-bit ARM boards, where one index commonly carries `arm/v6` and `arm/v7` entries: a Pi
//! Zero (ARMv6) must never get the v7 build, whose instructions it cannot execute. So Baton
//! resolves indexes itself, matching os, architecture *and* variant, with the same
//! compatibility rule as containerd: an ARMv7 CPU also runs v6 and v5 code, never the reverse.

use std::fmt;

use oci_client::manifest::ImageIndexEntry;
use serde::{Deserialize, Serialize};

/// An OCI platform (`os`/`arch`/`variant`), spelled as in image indexes: `linux/arm/v7`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Platform {
    pub os: String,
    pub arch: String,
    pub variant: Option<String>,
}

impl Platform {
    pub fn new(os: &str, arch: &str, variant: Option<&str>) -> Self {
        Self {
            os: os.to_owned(),
            arch: arch.to_owned(),
            variant: variant.map(str::to_owned),
        }
    }

    /// The platform whose images this machine runs natively.
    ///
    /// os and architecture come from `std::env::consts` (x86_64 -> amd64, aarch64 -> arm64,
    /// arm -> arm). For 32-bit ARM the variant cannot be taken from the build: stable rustc
    /// keeps ARM's `v6`/`v7` target features out of `cfg` (they are unstable; compare
    /// `rustc --print cfg --target armv7-unknown-linux-gnueabihf` with and without
    /// `RUSTC_BOOTSTRAP=1`). It is read at run time from the CPU instead (the `(v6l)` /
    /// `(v7l)` the kernel prints in `/proc/cpuinfo`, the same source as `uname -m`), which is
    /// also what matters: containers run on the CPU, whatever the agent binary was built for.
    /// An unreadable or unknown answer means v7, the common case for boards sold today.
    pub fn host() -> Self {
        let arch = go_arch(std::env::consts::ARCH);
        let variant = if arch == "arm" {
            let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
            Some(
                arm_variant_from_cpuinfo(&cpuinfo)
                    .unwrap_or("v7")
                    .to_owned(),
            )
        } else {
            None
        };
        Self {
            os: std::env::consts::OS.to_owned(),
            arch: arch.to_owned(),
            variant,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.arch)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Rust's `target_arch` names to the GOARCH names OCI uses.
fn go_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64",
        "loongarch64" => "loong64",
        other => other,
    }
}

/// The ARM variant the kernel reports for this CPU, from `/proc/cpuinfo` text.
///
/// The `model name`/`Processor` line ends in `(v6l)`, `(v7l)` or `(v8l)`. The `CPU
/// architecture` field is not used: ARM1176 (Pi Zero/1) reports 7 there although it is ARMv6.
pub(crate) fn arm_variant_from_cpuinfo(cpuinfo: &str) -> Option<&'static str> {
    for line in cpuinfo.lines() {
        let Some((key, value)) = line.split_once(':') else {
            continue;
        };
        let key = key.trim();
        if key != "model name" && key != "Processor" {
            continue;
        }
        let Some(start) = value.rfind("(v") else {
            continue;
        };
        match value[start + 2..].chars().next() {
            Some('5') => return Some("v5"),
            Some('6') => return Some("v6"),
            // A 32-bit userland on an ARMv8 core runs v7 code.
            Some('7') | Some('8') => return Some("v7"),
            _ => continue,
        }
    }
    None
}

/// A platform with aliases resolved and default variants filled in, so that equal platforms
/// compare equal: `aarch64` is `arm64/v8`, `arm` without variant is `arm/v7`.
#[derive(Debug, PartialEq, Eq)]
struct Normalized {
    os: String,
    arch: String,
    variant: Option<String>,
}

fn normalize(os: &str, arch: &str, variant: Option<&str>) -> Normalized {
    let os = os.to_ascii_lowercase();
    let arch = arch.to_ascii_lowercase();
    let variant = variant
        .filter(|v| !v.is_empty())
        .map(|v| v.to_ascii_lowercase());
    let (arch, variant) = match (arch.as_str(), variant) {
        ("x86_64" | "x86-64", v) => ("amd64".to_owned(), v),
        ("i386" | "i686", v) => ("386".to_owned(), v),
        ("aarch64" | "arm64", None) => ("arm64".to_owned(), Some("v8".to_owned())),
        ("aarch64", v) => ("arm64".to_owned(), v),
        ("armhf", _) => ("arm".to_owned(), Some("v7".to_owned())),
        ("armel", _) => ("arm".to_owned(), Some("v6".to_owned())),
        ("arm", None) => ("arm".to_owned(), Some("v7".to_owned())),
        (_, v) => (arch.clone(), v),
    };
    Normalized { os, arch, variant }
}

/// The ARM architecture version of a variant (`v7` -> 7).
fn arm_version(variant: Option<&str>) -> Option<u32> {
    variant?.strip_prefix('v')?.parse().ok()
}

/// How well an image built for `have` suits a machine of platform `want`: `None` if it
/// cannot run there, otherwise a rank where 0 is an exact match and larger is worse.
pub(crate) fn match_rank(
    want: &Platform,
    have_os: &str,
    have_arch: &str,
    have_variant: Option<&str>,
) -> Option<u32> {
    let want = normalize(&want.os, &want.arch, want.variant.as_deref());
    let have = normalize(have_os, have_arch, have_variant);
    if want.os != have.os || want.arch != have.arch {
        return None;
    }
    if want.variant == have.variant {
        return Some(0);
    }
    if want.arch == "arm" {
        // An ARMv7 CPU runs v6 and v5 code; prefer the newest the CPU supports.
        let w = arm_version(want.variant.as_deref())?;
        let h = arm_version(have.variant.as_deref())?;
        return (h <= w).then(|| w - h);
    }
    None
}

/// Picks the index entry for `want`: the best-ranked match, the first one on ties.
pub(crate) fn select_manifest<'a>(
    entries: &'a [ImageIndexEntry],
    want: &Platform,
) -> Option<&'a ImageIndexEntry> {
    entries
        .iter()
        .filter_map(|e| {
            let p = e.platform.as_ref()?;
            let rank = match_rank(
                want,
                &p.os.to_string(),
                &p.architecture.to_string(),
                p.variant.as_deref(),
            )?;
            Some((rank, e))
        })
        .min_by_key(|(rank, _)| *rank)
        .map(|(_, e)| e)
}

/// The platforms an index offers, for the error message when none suits.
pub(crate) fn describe_entries(entries: &[ImageIndexEntry]) -> Vec<String> {
    entries
        .iter()
        .filter_map(|e| {
            let p = e.platform.as_ref()?;
            Some(
                Platform::new(
                    &p.os.to_string(),
                    &p.architecture.to_string(),
                    p.variant.as_deref(),
                )
                .to_string(),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use oci_client::manifest::OCI_IMAGE_MEDIA_TYPE;

    fn entry(digest: &str, os: &str, arch: &str, variant: Option<&str>) -> ImageIndexEntry {
        let mut platform = serde_json::json!({ "os": os, "architecture": arch });
        if let Some(v) = variant {
            platform["variant"] = v.into();
        }
        serde_json::from_value(serde_json::json!({
            "mediaType": OCI_IMAGE_MEDIA_TYPE,
            "digest": digest,
            "size": 1,
            "platform": platform,
        }))
        .unwrap()
    }

    fn pick(entries: &[ImageIndexEntry], want: Platform) -> Option<&str> {
        select_manifest(entries, &want).map(|e| e.digest.as_str())
    }

    #[test]
    fn picks_exact_os_and_arch() {
        let idx = [
            entry("amd", "linux", "amd64", None),
            entry("arm64", "linux", "arm64", Some("v8")),
            entry("win", "windows", "amd64", None),
        ];
        assert_eq!(
            pick(&idx, Platform::new("linux", "amd64", None)),
            Some("amd")
        );
        // arm64 without variant is arm64/v8.
        assert_eq!(
            pick(&idx, Platform::new("linux", "arm64", None)),
            Some("arm64")
        );
        assert_eq!(
            pick(&idx, Platform::new("windows", "amd64", None)),
            Some("win")
        );
        assert_eq!(pick(&idx, Platform::new("linux", "riscv64", None)), None);
    }

    #[test]
    fn arm_variant_matters() {
        let idx = [
            entry("v6", "linux", "arm", Some("v6")),
            entry("v7", "linux", "arm", Some("v7")),
        ];
        assert_eq!(
            pick(&idx, Platform::new("linux", "arm", Some("v7"))),
            Some("v7")
        );
        assert_eq!(
            pick(&idx, Platform::new("linux", "arm", Some("v6"))),
            Some("v6")
        );
        // Order in the index must not matter.
        let rev = [idx[1].clone(), idx[0].clone()];
        assert_eq!(
            pick(&rev, Platform::new("linux", "arm", Some("v6"))),
            Some("v6")
        );
        assert_eq!(
            pick(&rev, Platform::new("linux", "arm", Some("v7"))),
            Some("v7")
        );
    }

    #[test]
    fn arm_falls_back_to_older_variant_only() {
        let only_v6 = [entry("v6", "linux", "arm", Some("v6"))];
        let only_v7 = [entry("v7", "linux", "arm", Some("v7"))];
        let v5_v6 = [
            entry("v5", "linux", "arm", Some("v5")),
            entry("v6", "linux", "arm", Some("v6")),
        ];
        assert_eq!(
            pick(&only_v6, Platform::new("linux", "arm", Some("v7"))),
            Some("v6")
        );
        assert_eq!(
            pick(&only_v7, Platform::new("linux", "arm", Some("v6"))),
            None
        );
        assert_eq!(
            pick(&v5_v6, Platform::new("linux", "arm", Some("v7"))),
            Some("v6")
        );
        // arm without variant is v7 on both sides.
        assert_eq!(
            pick(&only_v7, Platform::new("linux", "arm", None)),
            Some("v7")
        );
    }

    #[test]
    fn arm64_does_not_take_arm32_or_other_variants() {
        let idx = [
            entry("arm", "linux", "arm", Some("v7")),
            entry("amd-v3", "linux", "amd64", Some("v3")),
        ];
        assert_eq!(pick(&idx, Platform::new("linux", "arm64", None)), None);
        assert_eq!(pick(&idx, Platform::new("linux", "amd64", None)), None);
    }

    #[test]
    fn entries_without_platform_are_skipped() {
        let mut attestation = entry("att", "unknown", "unknown", None);
        attestation.platform = None;
        let idx = [attestation, entry("amd", "linux", "amd64", None)];
        assert_eq!(
            pick(&idx, Platform::new("linux", "amd64", None)),
            Some("amd")
        );
        assert_eq!(describe_entries(&idx), vec!["linux/amd64".to_owned()]);
    }

    #[test]
    fn single_image_rank() {
        let arm64 = Platform::new("linux", "arm64", None);
        assert_eq!(match_rank(&arm64, "linux", "arm64", None), Some(0));
        assert_eq!(match_rank(&arm64, "linux", "aarch64", Some("v8")), Some(0));
        assert_eq!(match_rank(&arm64, "linux", "amd64", None), None);
    }

    #[test]
    fn cpuinfo_variants() {
        let pi_zero = "processor\t: 0\nmodel name\t: ARMv6-compatible processor rev 7 (v6l)\n\
                       BogoMIPS\t: 697.95\nCPU architecture: 7\n";
        let pi3_32bit = "processor\t: 0\nmodel name\t: ARMv7 Processor rev 4 (v7l)\n";
        let armv8_32 = "model name\t: ARMv8 Processor rev 4 (v8l)\n";
        let old_kernel = "Processor\t: ARMv7 Processor rev 10 (v7l)\n";
        assert_eq!(arm_variant_from_cpuinfo(pi_zero), Some("v6"));
        assert_eq!(arm_variant_from_cpuinfo(pi3_32bit), Some("v7"));
        assert_eq!(arm_variant_from_cpuinfo(armv8_32), Some("v7"));
        assert_eq!(arm_variant_from_cpuinfo(old_kernel), Some("v7"));
        assert_eq!(arm_variant_from_cpuinfo("flags: fpu vme\n"), None);
    }

    #[test]
    fn host_is_linux_with_oci_arch() {
        let host = Platform::host();
        assert_eq!(host.os, "linux");
        assert!(!host.arch.contains('_'), "{host}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!(host, Platform::new("linux", "amd64", None));
        }
    }

    #[test]
    fn display() {
        assert_eq!(
            Platform::new("linux", "arm", Some("v6")).to_string(),
            "linux/arm/v6"
        );
        assert_eq!(
            Platform::new("linux", "arm64", None).to_string(),
            "linux/arm64"
        );
    }
}
