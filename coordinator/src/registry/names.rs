//! Image names: what Distribution accepts, and the repository agents will ask for.

use super::RegistryError;

fn valid_component(c: &str) -> bool {
    // Distribution: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
    let b = c.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_lowercase() | b[0].is_ascii_digit()
        && b[b.len() - 1].is_ascii_lowercase() | b[b.len() - 1].is_ascii_digit()
        && b.iter()
            .all(|&x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(&x))
        && !c.contains("..")
}

fn valid_tag(t: &str) -> bool {
    // Distribution: [\w][\w.-]{0,127}
    let b = t.as_bytes();
    (1..=128).contains(&b.len())
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&x| x.is_ascii_alphanumeric() || b"_.-".contains(&x))
}

/// Is `s` a valid repository path (`a/b/c`, lowercase)?
pub fn valid_repository(s: &str) -> bool {
    s.len() <= 255 && s.split('/').all(valid_component)
}

/// Splits an image name into the repository agents will ask for and its tag, if any:
/// a registry host is dropped and Docker Hub names are normalized as Docker does
/// (`busybox` -> `library/busybox`).
pub fn normalize_name(name: &str) -> Result<(String, Option<String>), RegistryError> {
    let bad = |reason: &str| RegistryError::InvalidName {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    if name.contains('@') {
        return Err(bad("a digest cannot name an image; use REPOSITORY:TAG"));
    }
    let (path, tag) = match name.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, Some(t.to_owned())),
        _ => (name, None),
    };
    if let Some(t) = &tag {
        if !valid_tag(t) {
            return Err(bad("a tag is 1-128 of letters, digits, '_', '.' and '-'"));
        }
    }
    let parts: Vec<&str> = path.split('/').collect();
    let first = parts[0];
    let has_host =
        parts.len() > 1 && (first.contains('.') || first.contains(':') || first == "localhost");
    let (host, rest) = if has_host {
        (Some(first), &parts[1..])
    } else {
        (None, &parts[..])
    };
    let docker_hub = matches!(
        host,
        None | Some("docker.io" | "index.docker.io" | "registry-1.docker.io")
    );
    let mut repo = rest.join("/");
    if docker_hub && rest.len() == 1 {
        repo = format!("library/{repo}");
    }
    if !valid_repository(&repo) {
        return Err(bad(
            "a repository is lowercase letters, digits and '.', '_', '-' between '/'",
        ));
    }
    Ok((repo, tag))
}
