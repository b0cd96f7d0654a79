use super::*;

fn svc() -> Ipv4Range {
    "10.43.0.0/16".parse().unwrap()
}

fn claim<'a>(node: &'a str, cidr: &'a str, held: bool, registered: &'a str) -> Claim<'a> {
    Claim {
        node,
        cidr,
        address: Some(Ipv4Addr::new(192, 168, 1, 10)),
        held,
        registered,
    }
}

fn r(s: &str) -> Ipv4Range {
    s.parse().unwrap()
}

#[test]
fn ranges_parse_masked_and_overlap_by_their_bounds() {
    assert_eq!(r("10.42.1.7/24").to_string(), "10.42.1.0/24");
    assert!(r("10.42.0.0/16").overlaps(r("10.42.200.0/24")));
    assert!(r("10.42.200.0/24").overlaps(r("10.42.0.0/16")));
    assert!(!r("10.42.1.0/24").overlaps(r("10.42.2.0/24")));
    assert!(r("0.0.0.0/0").overlaps(r("10.42.2.0/24")));
    assert!(r("10.42.1.0/24").contains(Ipv4Addr::new(10, 42, 1, 255)));
    assert!(!r("10.42.1.0/24").contains(Ipv4Addr::new(10, 42, 2, 0)));
    for bad in ["10.42.1.0", "10.42.1.0/33", "x/24", "10.42.1.0/"] {
        assert!(bad.parse::<Ipv4Range>().is_err(), "{bad}");
    }
}

#[test]
fn disjoint_ranges_are_all_held_and_a_node_without_one_has_none() {
    let v = decide(
        &[
            claim("a", "10.42.1.0/24", false, "2026-01-01T00:00:00Z"),
            claim("b", "10.42.2.0/24", false, "2026-01-01T00:00:01Z"),
            claim("c", "", false, "2026-01-01T00:00:02Z"),
        ],
        svc(),
    );
    assert_eq!(v["a"], Verdict::Holds(r("10.42.1.0/24")));
    assert_eq!(v["b"], Verdict::Holds(r("10.42.2.0/24")));
    assert_eq!(v["c"], Verdict::NoRange);
}

#[test]
fn the_first_holder_keeps_its_range_whatever_the_order_or_the_claims_width() {
    // b registered first but a holds the range already (as stored): a keeps it.
    let claims = [
        claim("a", "10.42.1.0/24", true, "2026-01-01T00:00:05Z"),
        claim("b", "10.42.1.0/24", false, "2026-01-01T00:00:00Z"),
        // A wider range over a's: refused too, naming a.
        claim("c", "10.42.0.0/16", false, "2026-01-01T00:00:01Z"),
        // A narrower one inside a's.
        claim("d", "10.42.1.128/25", false, "2026-01-01T00:00:02Z"),
    ];
    for rev in [false, true] {
        let mut cs = claims.to_vec();
        if rev {
            cs.reverse();
        }
        let v = decide(&cs, svc());
        assert_eq!(v["a"], Verdict::Holds(r("10.42.1.0/24")));
        for (node, cidr) in [
            ("b", "10.42.1.0/24"),
            ("c", "10.42.0.0/16"),
            ("d", "10.42.1.128/25"),
        ] {
            assert_eq!(
                v[node],
                Verdict::Refused(Refusal::Overlaps {
                    cidr: r(cidr),
                    holder: "a".into(),
                    holder_cidr: r("10.42.1.0/24"),
                }),
                "{node}"
            );
        }
    }
    // Nobody held it yet (a first decision, or nodes stored before this rule): the
    // earliest registration wins, then the name.
    let v = decide(
        &[
            claim("z", "10.42.1.0/24", false, "2026-01-01T00:00:00Z"),
            claim("y", "10.42.1.0/24", false, "2026-01-01T00:00:09Z"),
        ],
        svc(),
    );
    assert_eq!(v["z"], Verdict::Holds(r("10.42.1.0/24")));
    assert!(matches!(&v["y"], Verdict::Refused(Refusal::Overlaps { holder, .. }) if holder == "z"));
    let same = "2026-01-01T00:00:00Z";
    let v = decide(
        &[
            claim("n2", "10.42.1.0/24", false, same),
            claim("n1", "10.42.1.0/24", false, same),
        ],
        svc(),
    );
    assert_eq!(v["n1"], Verdict::Holds(r("10.42.1.0/24")));
}

#[test]
fn a_refused_node_gets_the_range_once_the_holder_is_gone() {
    let v = decide(
        &[claim("b", "10.42.1.0/24", false, "2026-01-01T00:00:09Z")],
        svc(),
    );
    assert_eq!(v["b"], Verdict::Holds(r("10.42.1.0/24")));
}

#[test]
fn ranges_over_the_services_or_the_nodes_own_address_or_unparsable_are_refused() {
    let mut own = claim("e", "192.168.1.0/24", false, "2026-01-01T00:00:04Z");
    own.address = Some(Ipv4Addr::new(192, 168, 1, 10));
    let v = decide(
        &[
            claim("a", "10.43.7.0/24", false, "2026-01-01T00:00:00Z"),
            claim("b", "0.0.0.0/0", false, "2026-01-01T00:00:01Z"),
            claim("c", "10.0.0.0/8", false, "2026-01-01T00:00:02Z"),
            claim("d", "bogus", false, "2026-01-01T00:00:03Z"),
            own,
            claim("f", "10.42.9.0/24", false, "2026-01-01T00:00:05Z"),
        ],
        svc(),
    );
    assert!(matches!(
        v["a"],
        Verdict::Refused(Refusal::ServiceCidr { .. })
    ));
    assert!(matches!(
        v["b"],
        Verdict::Refused(Refusal::ServiceCidr { .. })
    ));
    assert!(matches!(
        v["c"],
        Verdict::Refused(Refusal::ServiceCidr { .. })
    ));
    assert!(matches!(v["d"], Verdict::Refused(Refusal::Invalid { .. })));
    assert!(matches!(
        v["e"],
        Verdict::Refused(Refusal::OwnAddress { .. })
    ));
    // Refused claims take nothing: f's range is free.
    assert_eq!(v["f"], Verdict::Holds(r("10.42.9.0/24")));
    let msg = Refusal::Overlaps {
        cidr: r("10.42.1.0/24"),
        holder: "pi-1".into(),
        holder_cidr: r("10.42.1.0/24"),
    }
    .to_string();
    assert!(msg.contains("held by node pi-1"), "{msg}");
}

#[test]
fn many_disjoint_and_overlapping_claims_agree_with_pairwise_checks() {
    // The neighbour search against every pair, over ranges of mixed widths.
    let cidrs: Vec<String> = (0..200u32)
        .map(|i| {
            let prefix = 20 + (i % 7) as u8;
            format!("10.{}.{}.0/{prefix}", 100 + (i * 37) % 5, (i * 91) % 256)
        })
        .collect();
    let names: Vec<String> = (0..200).map(|i| format!("n{i:03}")).collect();
    let claims: Vec<Claim<'_>> = (0..200)
        .map(|i| claim(&names[i], &cidrs[i], false, "2026-01-01T00:00:00Z"))
        .collect();
    let v = decide(&claims, svc());
    let mut held: Vec<Ipv4Range> = Vec::new();
    for n in &names {
        let mine: Ipv4Range = cidrs[names.iter().position(|x| x == n).unwrap()]
            .parse()
            .unwrap();
        let free = held.iter().all(|h| !h.overlaps(mine));
        assert_eq!(matches!(v[n], Verdict::Holds(_)), free, "{n} {mine}");
        if free {
            held.push(mine);
        }
    }
    assert!(held.len() > 20 && held.len() < 200, "{}", held.len());
}
