//! The cluster specs the suite deploys, written as a user would write them for a one-node
//! test swarm: every member on its own generated node label (all on this node), ports
//! published in `host` mode on free ports (the routing mesh does not answer on 127.0.0.1 here).

use anyhow::Result;

use crate::stack::free_port;

/// Replication topology: a primary and one streaming replica, both published for the test client.
pub fn replication(name: &str, image: &str) -> Result<String> {
    let primary = free_port()?;
    let replica = free_port()?;
    Ok(format!(
        "name: {name}
topology: replication
image: {image}
replication:
  primary:
    name: primary
    publish: {{port: {primary}, mode: host}}
  replicas:
    - name: replica
      publish: {{port: {replica}, mode: host}}
"
    ))
}

/// Patroni topology: three Patroni members, three etcd members, HAProxy router and PgBouncer in
/// transaction mode; synchronous mode when `synchronous`. Failover-friendly Patroni and router
/// timing (ttl 20, loop_wait 5, retry_timeout 3; checks every second).
pub fn patroni(name: &str, image: &str, synchronous: bool) -> Result<String> {
    let rw = free_port()?;
    let ro = free_port()?;
    let pooler = free_port()?;
    let sync = if synchronous { "on" } else { "off" };
    Ok(format!(
        "name: {name}
topology: patroni
image: {image}
members: 3
patroni:
  ttl: 20
  loop_wait: 5
  retry_timeout: 3
  synchronous_mode: {sync}
etcd:
  members: 3
router:
  rw_port: {rw}
  ro_port: {ro}
  publish: host
  check_interval_ms: 1000
  fall: 2
  rise: 1
pooler:
  port: {pooler}
  publish: host
  pool_mode: transaction
"
    ))
}
