//! The text of the files `baton-agent install` writes: the systemd unit, the environment
//! file and the modules-load list. Pure functions, so each is checked without a system.

use super::{InstallError, BINARY, ENV_FILE};

/// Kernel modules the agent needs: overlayfs for container root filesystems; veth, bridge
/// and br_netfilter for pod networks; nf_nat, iptable_nat, xt_MASQUERADE and xt_conntrack
/// for pod egress; xt_addrtype, xt_mark and xt_nat for hostPorts (DNAT, `crate::network`). Debian's and Raspberry Pi OS's kernels build them all as
/// modules (docs/devices.md), which nothing loads until something asks.
pub const MODULES: &[&str] = &[
    "overlay",
    "br_netfilter",
    "veth",
    "bridge",
    "nf_nat",
    "iptable_nat",
    "xt_MASQUERADE",
    "xt_conntrack",
    "xt_addrtype",
    "xt_mark",
    "xt_nat",
];

/// `/etc/modules-load.d/baton-agent.conf`: loaded by systemd-modules-load at every boot.
pub fn modules_load() -> String {
    let mut s =
        String::from("# Written by `baton-agent install`: kernel modules Baton's pods need.\n");
    for m in MODULES {
        s.push_str(m);
        s.push('\n');
    }
    s
}

/// The systemd unit. Why each setting:
/// - `Type=simple`: the agent does not fork; it logs to stderr, which goes to the journal.
/// - `ExecStartPre=-modprobe`: modules-load.d only runs at boot, and the first start comes
///   right after install; `-` because a module built into the kernel is not an error.
/// - `Delegate=yes`: the agent manages cgroups itself; systemd leaves them alone.
/// - `KillMode=process`: stopping or restarting the agent (an upgrade, a crash) stops the
///   agent only. Its containers were cloned off it (their init is its child until it dies)
///   but run in cgroups of their own, and keep running: offline autonomy; the next agent
///   adopts them. `baton-agent reset` or `uninstall` removes them for good.
/// - `Restart=always` with `StartLimitIntervalSec=0`: an agent never stays down because it
///   failed a few times in a row (a device can wait long for its network). `RestartSec=1s`:
///   an agent update's switch is an exit, and pods go unwatched until the next start.
/// - `ExecStart=… launch`: the launcher (this installed binary, never replaced by an update)
///   execs the agent binary the update state names and rolls back a bad update by itself;
///   `ExecStopPost=… launch --record-exit` records each exit's `EXIT_CODE`/`EXIT_STATUS`
///   for its crash counter (docs/updates.md, "On the device").
/// - `TasksMax=infinity`: exec probes and container creates are briefly tasks of the unit.
pub fn unit() -> String {
    format!(
        "\
# Written by `baton-agent install`; `baton-agent uninstall` removes it.
# Settings: /{ENV_FILE} (BATON_* variables, one per flag: `baton-agent --help`).
[Unit]
Description=Baton agent: runs the pods its coordinator assigns to this node
Wants=network-online.target
After=network-online.target
StartLimitIntervalSec=0

[Service]
Type=simple
EnvironmentFile=/{ENV_FILE}
ExecStartPre=-/sbin/modprobe -a {modules}
ExecStart=/{BINARY} launch
ExecStopPost=/{BINARY} launch --record-exit
Restart=always
RestartSec=1s
Delegate=yes
KillMode=process
TasksMax=infinity
LimitNOFILE=1048576
StandardOutput=journal
StandardError=journal

[Install]
WantedBy=multi-user.target
",
        modules = MODULES.join(" ")
    )
}

/// A value written as is: no quoting needed by systemd's `EnvironmentFile=` nor by a shell
/// that sources the file.
fn plain(v: &str) -> bool {
    v.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"_-./:,=@+%".contains(&b))
}

/// The environment file: `NAME=value` lines, a value in single quotes when it has other
/// characters (both systemd and sh take those literally). A value with a single quote, a
/// newline or another control character is refused: neither reader could take it back
/// unchanged.
pub fn render_env(vars: &[(String, String)]) -> Result<String, InstallError> {
    let mut s =
        String::from("# Written by `baton-agent install` (mode 0600: it holds the join token).\n");
    for (name, value) in vars {
        let ok_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !ok_name {
            return Err(InstallError::EnvValue {
                name: name.clone(),
                message: "not an environment variable name".into(),
            });
        }
        if value.contains('\'') || value.chars().any(char::is_control) {
            return Err(InstallError::EnvValue {
                name: name.clone(),
                message: "a value with a single quote or a control character cannot be written to the environment file".into(),
            });
        }
        if plain(value) {
            s.push_str(&format!("{name}={value}\n"));
        } else {
            s.push_str(&format!("{name}='{value}'\n"));
        }
    }
    Ok(s)
}

/// Reads back what [`render_env`] wrote (and simple hand edits: comments, blank lines,
/// double quotes without escapes).
pub fn parse_env(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let Some((name, value)) = line.split_once('=') else {
            return Err(format!("line {}: not NAME=value", n + 1));
        };
        let value = value.trim();
        let unquoted = ['\'', '"'].iter().find_map(|q| {
            value
                .strip_prefix(*q)
                .and_then(|v| v.strip_suffix(*q))
                .filter(|v| !v.contains(*q))
        });
        out.push((name.trim().to_owned(), unquoted.unwrap_or(value).to_owned()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn the_unit_says_what_the_agent_needs() {
        let u = unit();
        let lines: Vec<&str> = u.lines().collect();
        for want in [
            "Type=simple",
            "ExecStart=/usr/local/bin/baton-agent launch",
            "ExecStopPost=/usr/local/bin/baton-agent launch --record-exit",
            "EnvironmentFile=/etc/baton-agent/agent.env",
            "Delegate=yes",
            "KillMode=process",
            "Restart=always",
            "RestartSec=1s",
            "StandardOutput=journal",
            "StandardError=journal",
            "After=network-online.target",
            "Wants=network-online.target",
            "WantedBy=multi-user.target",
            "StartLimitIntervalSec=0",
            "ExecStartPre=-/sbin/modprobe -a overlay br_netfilter veth bridge nf_nat iptable_nat xt_MASQUERADE xt_conntrack xt_addrtype xt_mark xt_nat",
        ] {
            assert!(lines.contains(&want), "{want} missing from:\n{u}");
        }
        // Sections in systemd's order, each key in the section systemd reads it from.
        let at = |s: &str| u.find(s).unwrap();
        assert!(at("[Unit]") < at("After=") && at("After=") < at("[Service]"));
        assert!(at("[Service]") < at("KillMode=") && at("KillMode=") < at("[Install]"));
        assert!(at("[Install]") < at("WantedBy="));
    }

    #[test]
    fn modules_load_lists_every_module_once_per_line() {
        let m = modules_load();
        let names: Vec<&str> = m.lines().filter(|l| !l.starts_with('#')).collect();
        assert_eq!(names, MODULES);
        for want in ["overlay", "br_netfilter", "xt_MASQUERADE", "xt_conntrack"] {
            assert!(names.contains(&want));
        }
    }

    #[test]
    fn env_values_round_trip_quoted_only_when_needed() {
        let v = vars(&[
            ("BATON_COORDINATOR", "mqtts://10.0.0.1:8883"),
            ("BATON_LABELS", "zone=lab,disk=ssd"),
            ("BATON_JOIN_TOKEN", "bjt1.0011.aabb.ccdd"),
            ("BATON_AGENT_DATA_DIR", "/var/lib/my agent"),
            ("BATON_NODE_NAME", "pi-7"),
            ("BATON_REGISTRY_MIRROR", "http://h:5000/#x$y\"z"),
            ("BATON_EMPTY", ""),
        ]);
        let text = render_env(&v).unwrap();
        assert!(text.contains("\nBATON_COORDINATOR=mqtts://10.0.0.1:8883\n"));
        assert!(text.contains("\nBATON_AGENT_DATA_DIR='/var/lib/my agent'\n"));
        assert!(text.contains("\nBATON_REGISTRY_MIRROR='http://h:5000/#x$y\"z'\n"));
        assert_eq!(parse_env(&text).unwrap(), v);
    }

    #[test]
    fn values_no_reader_takes_back_are_refused() {
        for (name, value) in [
            ("BATON_NODE_NAME", "it's"),
            ("BATON_LABELS", "a=b\nBATON_INSECURE_UNENROLLED=1"),
            ("BATON_LABELS", "a\u{7}"),
            ("baton_lower", "x"),
            ("BAD-NAME", "x"),
            ("", "x"),
        ] {
            let e = render_env(&vars(&[(name, value)])).unwrap_err();
            assert!(
                matches!(e, InstallError::EnvValue { .. }),
                "{name}={value:?}: {e}"
            );
        }
    }

    #[test]
    fn hand_edits_are_read_too() {
        let got = parse_env(
            "# comment\n\n; also a comment\nexport A=1\nB = \"two words\"\n  C='x'  \nD=a'b\n",
        )
        .unwrap();
        assert_eq!(
            got,
            vars(&[("A", "1"), ("B", "two words"), ("C", "x"), ("D", "a'b")])
        );
        assert!(parse_env("NOEQUALS\n").unwrap_err().contains("line 1"));
    }
}
