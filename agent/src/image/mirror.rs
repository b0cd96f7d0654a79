//! A registry mirror tried first for every image (`--registry-mirror`), as containerd's
//! `hosts.toml` mirrors are: the coordinator's own registry at an air-gapped site, or a
//! pull-through cache.
//!
//! A pull of `registry.example/app/web:1` first asks the mirror for `app/web:1` (same
//! repository path, same tag or digest; Docker Hub names as `library/...`), and only if
//! that fails asks `registry.example` itself. Everything the mirror serves is verified
//! exactly like a registry's (manifest digests, blob digests and sizes), so a mirror can
//! make a pull fail but never change what runs. The image is recorded under the name the
//! pod gave, whichever host served it, so pull policies and garbage collection see one
//! image.
//!
//! The mirrored reference is oci-client's own mirror form (`Reference::set_mirror_registry`):
//! requests go to the mirror with `?ns=<original registry>` appended, which Distribution
//! and Baton's coordinator ignore and containerd-aware mirrors use. That method is
//! `#[doc(hidden)]` in oci-spec 0.10, so a bump of oci-client must re-check it; the unit
//! tests below pin its behaviour.
//!
//! Auth: an optional bearer token (`--registry-mirror-token-file`; for Baton's coordinator,
//! a `read-only` API token), sent as is; without one, `--registry-config` credentials for
//! the mirror's host apply. An `http://` mirror is plain HTTP; an `https://` one is
//! verified against the built-in roots plus `--registry-mirror-ca`.

use std::path::Path;
use std::sync::Arc;

use oci_client::Reference;
use tracing::{info, warn};

use super::auth::Credentials;
use super::{ImageConfig, ImageError, Inner};

/// Where the mirror is and how to reach it.
#[derive(Clone, PartialEq, Eq)]
pub struct RegistryMirror {
    /// `host[:port]`, as a registry appears in image references.
    host: String,
    /// Plain HTTP (`http://` URL).
    insecure: bool,
    credentials: Option<Credentials>,
    /// A PEM bundle to trust for it.
    ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RegistryMirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryMirror")
            .field("host", &self.host)
            .field("insecure", &self.insecure)
            .field("credentials", &self.credentials)
            .field("ca", &self.ca.is_some())
            .finish()
    }
}

fn invalid(url: &str, reason: impl Into<String>) -> ImageError {
    ImageError::Mirror {
        url: url.to_owned(),
        reason: reason.into(),
    }
}

impl RegistryMirror {
    /// Parses `http://host[:port]` or `https://host[:port]` (a trailing `/` is allowed, a
    /// path is not: registries live at `/v2/` of their host).
    pub fn parse(url: &str) -> Result<Self, ImageError> {
        let (insecure, rest) = if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else {
            return Err(invalid(
                url,
                "use http://HOST[:PORT] or https://HOST[:PORT]",
            ));
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.is_empty() || host.contains('/') || host.contains('@') || host.contains('?') {
            return Err(invalid(
                url,
                "give only a scheme and HOST[:PORT], with no path or user",
            ));
        }
        Ok(Self {
            host: host.to_owned(),
            insecure,
            credentials: None,
            ca: None,
        })
    }

    /// The mirror of `url`, with the bearer token in `token_file` (trimmed) and the PEM CA
    /// bundle in `ca_file`, both read now so a typo shows at start.
    pub fn load(
        url: &str,
        token_file: Option<&Path>,
        ca_file: Option<&Path>,
    ) -> Result<Self, ImageError> {
        let mut m = Self::parse(url)?;
        if let Some(p) = token_file {
            let token = std::fs::read_to_string(p)
                .map_err(|e| invalid(url, format!("cannot read {}: {e}", p.display())))?;
            let token = token.trim();
            if token.is_empty() {
                return Err(invalid(url, format!("{} is empty", p.display())));
            }
            m.credentials = Some(Credentials::Bearer(token.to_owned()));
        }
        if let Some(p) = ca_file {
            m.ca = Some(super::load_ca(p)?);
        }
        Ok(m)
    }

    /// The mirror's `host[:port]`.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether it is reached over plain HTTP.
    pub fn is_insecure(&self) -> bool {
        self.insecure
    }

    /// Its extra CA bundle, if any.
    pub fn ca(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// `reference` as fetched from the mirror, or `None` if it already names the mirror.
    pub(crate) fn mirrored(&self, reference: &Reference) -> Option<Reference> {
        if reference.resolve_registry() == self.host || reference.registry() == self.host {
            return None;
        }
        let mut r = reference.clone();
        r.set_mirror_registry(self.host.clone());
        Some(r)
    }
}

/// What a failed pull reports when the mirror and the image's own registry both failed:
/// the registry's error, unless the registry could not even be reached (the air-gapped
/// case) and the mirror said something more useful than "not here" (a wrong token, a
/// corrupt blob).
pub(crate) fn pick_error(mirror: ImageError, origin: ImageError) -> ImageError {
    let origin_unreachable = matches!(
        origin,
        ImageError::Unreachable { .. } | ImageError::Tls { .. }
    );
    let mirror_not_found = matches!(mirror, ImageError::NotFound(_));
    if origin_unreachable && !mirror_not_found {
        mirror
    } else {
        origin
    }
}

impl Inner {
    /// [`Inner::pull_inner`] through the mirror first, if one is set, then from the image's
    /// own registry. A disk budget failure is final: the other host's copy would not fit
    /// either.
    pub(super) async fn pull_via_mirror(
        self: Arc<Self>,
        reference: Reference,
        key: String,
        creds: Option<Credentials>,
    ) -> Result<ImageConfig, ImageError> {
        let mirrored = self.mirror.as_ref().and_then(|m| {
            m.mirrored(&reference)
                .map(|r| (r, m.credentials.clone(), m.host.clone()))
        });
        let Some((mirrored, mirror_creds, host)) = mirrored else {
            return self.pull_inner(reference, key, creds).await;
        };
        let mirror_err = match Arc::clone(&self)
            .pull_inner(mirrored, key.clone(), mirror_creds)
            .await
        {
            Ok(cfg) => {
                info!(image = %reference.whole(), mirror = %host, "pulled from the registry mirror");
                return Ok(cfg);
            }
            Err(e @ ImageError::DiskBudget(_)) => return Err(e),
            Err(e) => e,
        };
        if matches!(mirror_err, ImageError::NotFound(_)) {
            info!(image = %reference.whole(), mirror = %host, "not on the registry mirror; pulling from its registry");
        } else {
            warn!(image = %reference.whole(), mirror = %host, error = %mirror_err, "registry mirror failed; pulling from the image's registry");
        }
        match self.pull_inner(reference, key, creds).await {
            Ok(cfg) => Ok(cfg),
            Err(origin) => Err(pick_error(mirror_err, origin)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_accepts_scheme_and_host_only() {
        let m = RegistryMirror::parse("http://10.0.0.1:7474").unwrap();
        assert_eq!(m.host(), "10.0.0.1:7474");
        assert!(m.is_insecure());
        let m = RegistryMirror::parse("https://mirror.lan/").unwrap();
        assert_eq!(m.host(), "mirror.lan");
        assert!(!m.is_insecure());
        for bad in [
            "10.0.0.1:7474",
            "ftp://x",
            "http://",
            "http://h/v2",
            "http://u@h",
        ] {
            let e = RegistryMirror::parse(bad).unwrap_err();
            assert!(
                e.to_string().contains("invalid registry mirror"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn load_reads_a_trimmed_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("token");
        std::fs::write(&p, "secret\n").unwrap();
        let m = RegistryMirror::load("http://h:1", Some(&p), None).unwrap();
        assert_eq!(m.credentials, Some(Credentials::Bearer("secret".into())));
        assert!(!format!("{m:?}").contains("secret"));
        std::fs::write(&p, " \n").unwrap();
        assert!(RegistryMirror::load("http://h:1", Some(&p), None).is_err());
        assert!(RegistryMirror::load("http://h:1", Some(&dir.path().join("no")), None).is_err());
    }

    /// The mirrored reference keeps the pod's name (what the store records) and sends the
    /// same repository and tag or digest to the mirror's host.
    #[test]
    fn mirrored_reference_goes_to_the_mirror_under_the_same_path() {
        let m = RegistryMirror::parse("http://10.0.0.1:7474").unwrap();
        let r: Reference = "10.9.9.9:5000/baton/http-echo:1".parse().unwrap();
        let mr = m.mirrored(&r).unwrap();
        assert_eq!(mr.resolve_registry(), "10.0.0.1:7474");
        assert_eq!(mr.repository(), "baton/http-echo");
        assert_eq!(mr.tag(), Some("1"));
        assert_eq!(mr.whole(), r.whole());

        let hub: Reference =
            "busybox@sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
                .parse()
                .unwrap();
        let mh = m.mirrored(&hub).unwrap();
        assert_eq!(mh.resolve_registry(), "10.0.0.1:7474");
        assert_eq!(mh.repository(), "library/busybox");
        assert_eq!(mh.digest(), hub.digest());

        let direct: Reference = "10.0.0.1:7474/baton/http-echo:1".parse().unwrap();
        assert!(m.mirrored(&direct).is_none());
    }

    #[test]
    fn the_more_useful_error_is_reported() {
        let nf = || ImageError::NotFound("x".into());
        let unreachable = || ImageError::Unreachable {
            registry: "r".into(),
            reason: "no route".into(),
        };
        let unauthorized = || ImageError::Unauthorized {
            registry: "m".into(),
            reference: "x".into(),
            hint: "check the credentials for it",
        };
        // Air-gapped, wrong mirror token: say so, not "registry unreachable".
        assert!(matches!(
            pick_error(unauthorized(), unreachable()),
            ImageError::Unauthorized { .. }
        ));
        // The mirror lacks it and the registry is down: the registry's error.
        assert!(matches!(
            pick_error(nf(), unreachable()),
            ImageError::Unreachable { .. }
        ));
        // The registry answered: its answer.
        assert!(matches!(
            pick_error(unauthorized(), nf()),
            ImageError::NotFound(_)
        ));
    }
}
