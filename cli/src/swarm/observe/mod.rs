//! The observation layer the day-2 commands share (`status`, `deploy --wait`, `up`,
//! `switchover`, `citus`): Docker's view of each service (tasks, node, container health) and
//! the database's view of each data member (role, state, timeline, lag).
//!
//! Containers can be reached only on this node: a member running on another node shows its
//! task state and node, and its health as `remote`.

mod database;
mod docker;

pub use database::{
    activity_view, db_view, parse_activity, parse_lsn, parse_patronictl, patroni_view, patroni_yml,
    replication_view, Activity, DbView,
};
pub use docker::{docker_view, superuser_container, ServiceView};
