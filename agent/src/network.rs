//! Pod networking: per-node bridge, per-pod netns + veth, NAT and hostPort forwarding.
