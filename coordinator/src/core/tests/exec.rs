use super::*;

fn exec(h: &mut Harness, pod: &str, container: Option<&str>) -> Result<ApiReply, ApiError> {
    h.api(ApiOp::Exec {
        pod: pod.into(),
        container: container.map(Into::into),
        command: vec!["sh".into(), "-c".into(), "id".into()],
        by: "alice".into(),
    })
}

#[test]
fn exec_needs_a_running_pod_on_a_ready_node_and_every_exec_is_an_event() {
    let mut h = two_nodes();
    h.apply(&deployment("web", 1, "100m")).unwrap();
    let msgs = h.drain();
    let pod = h.pods()[0].clone();
    let name = pod.metadata.name.clone();
    let node = pod.spec.node_name.clone().expect("scheduled");
    let refused = |r: Result<ApiReply, ApiError>, what: &str| match r {
        Err(ApiError::Conflict(m) | ApiError::BadRequest(m) | ApiError::NotFound(m)) => {
            assert!(m.contains(what), "{m:?} does not say {what:?}")
        }
        other => panic!("not refused: {other:?}"),
    };
    refused(exec(&mut h, &name, None), "not running");
    refused(exec(&mut h, "nope", None), "not found");
    let d = desired_for(&msgs, &node).expect("the pod's node got its desired state");
    h.send(&node, Body::Status(running_status(&d, d.generation)));
    let Ok(ApiReply::Exec(t)) = exec(&mut h, &name, None) else {
        panic!("a running pod takes an exec")
    };
    assert_eq!(
        (t.node.as_str(), t.pod_uid.as_str(), t.container.as_str()),
        (node.as_str(), pod.metadata.uid.as_str(), "main"),
        "the pod's first container by default"
    );
    refused(exec(&mut h, &name, Some("side")), "not valid");
    let ApiReply::Events(events) = h
        .api(ApiOp::Events {
            object: Some(format!("pod/{name}")),
        })
        .unwrap()
    else {
        panic!("events")
    };
    let execs: Vec<_> = events.iter().filter(|e| e.reason == "Exec").collect();
    assert_eq!(execs.len(), 1, "one event per exec that ran: {events:?}");
    assert_eq!(
        execs[0].message,
        r#"token alice ran ["sh", "-c", "id"] in container main"#
    );
    // Stored with the others: it outlives a restart like every event.
    assert!(h
        .store
        .list(Table::Events)
        .unwrap()
        .iter()
        .any(|(_, v)| String::from_utf8_lossy(v).contains("alice")));
    h.send(&node, Body::Offline);
    refused(exec(&mut h, &name, None), "offline");
    // Back as a v4 (Baton 0.1) agent, which has no exec sessions.
    h.core.handle(Event::Inbound {
        node: nn(&node),
        body: hello(4000),
        proto: 4,
    });
    refused(exec(&mut h, &name, None), "agent too old for exec");
    assert!(
        !h.drain()
            .iter()
            .any(|m| matches!(m.body, Body::ExecRequest(_))),
        "the core never sends exec requests itself"
    );
}
