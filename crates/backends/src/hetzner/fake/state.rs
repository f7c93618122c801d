//! The fake's state: servers, actions, injected failures, and how they change with time.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use kiln_core::Timestamp;
use kiln_core::clock::add_duration;

use super::{Endpoint, FakeFailure, FakeServer};
use crate::hetzner::api::{self, CreateServerRequest};

/// Everything the fake holds, behind one lock.
#[derive(Default)]
pub(super) struct State {
    pub(super) next_id: i64,
    pub(super) servers: BTreeMap<i64, ServerRecord>,
    pub(super) actions: BTreeMap<i64, ActionRecord>,
    pub(super) failures: BTreeMap<Endpoint, VecDeque<FakeFailure>>,
    pub(super) action_failures: BTreeMap<String, VecDeque<(String, String)>>,
    pub(super) calls: BTreeMap<Endpoint, u64>,
    pub(super) create_requests: Vec<CreateServerRequest>,
}

/// A server: its create request and when it reaches each status.
pub(super) struct ServerRecord {
    pub(super) request: CreateServerRequest,
    pub(super) id: i64,
    pub(super) created: Timestamp,
    pub(super) started_at: Timestamp,
    pub(super) running_at: Timestamp,
    pub(super) create_action: i64,
    pub(super) start_action: i64,
    pub(super) delete_action: Option<i64>,
}

/// An action: when it ends, and the error it ends with, if told to fail.
pub(super) struct ActionRecord {
    pub(super) id: i64,
    pub(super) command: String,
    pub(super) server: i64,
    pub(super) started: Timestamp,
    pub(super) done_at: Timestamp,
    pub(super) error: Option<(String, String)>,
}

impl State {
    pub(super) fn next_id(&mut self) -> i64 {
        self.next_id += 1;
        self.next_id
    }

    /// Applies completed deletions; returns the servers that went.
    pub(super) fn advance(&mut self, now: Timestamp) -> Vec<FakeServer> {
        let done: Vec<i64> = self
            .servers
            .values()
            .filter(|s| {
                s.delete_action
                    .and_then(|a| self.actions.get(&a))
                    .is_some_and(|a| now >= a.done_at && a.error.is_none())
            })
            .map(|s| s.id)
            .collect();
        done.iter()
            .filter_map(|id| {
                let snapshot = self.servers.get(id).map(|s| self.snapshot(s, now));
                self.servers.remove(id);
                snapshot
            })
            .collect()
    }

    pub(super) fn status(&self, server: &ServerRecord, now: Timestamp) -> &'static str {
        let failed = |action: i64| {
            self.actions
                .get(&action)
                .is_some_and(|a| a.error.is_some() && now >= a.done_at)
        };
        if server.delete_action.is_some() {
            "deleting"
        } else if failed(server.create_action) || failed(server.start_action) {
            "off"
        } else if now < server.started_at {
            "initializing"
        } else if now < server.running_at {
            "starting"
        } else {
            "running"
        }
    }

    pub(super) fn snapshot(&self, server: &ServerRecord, now: Timestamp) -> FakeServer {
        FakeServer {
            id: server.id,
            name: server.request.name.clone(),
            status: self.status(server, now).to_owned(),
            labels: server.request.labels.clone(),
            server_type: server.request.server_type.clone(),
            image: server.request.image.clone(),
            location: server
                .request
                .location
                .clone()
                .unwrap_or_else(|| "nbg1".into()),
            user_data: server.request.user_data.clone(),
            created: server.created,
        }
    }

    pub(super) fn api_server(&self, server: &ServerRecord, now: Timestamp) -> api::Server {
        let location = server
            .request
            .location
            .clone()
            .unwrap_or_else(|| "nbg1".into());
        let octets = server.id.to_be_bytes();
        api::Server {
            id: server.id,
            name: server.request.name.clone(),
            status: self.status(server, now).to_owned(),
            created: server.created.to_rfc3339(),
            labels: server.request.labels.clone(),
            server_type: Some(api::NamedRef {
                id: 1,
                name: server.request.server_type.clone(),
            }),
            image: Some(api::NamedRef {
                id: 114_690_387,
                name: server.request.image.clone(),
            }),
            datacenter: Some(api::Datacenter {
                id: 2,
                name: format!("{location}-dc3"),
                location: api::NamedRef {
                    id: 1,
                    name: location,
                },
            }),
            public_net: Some(api::PublicNet {
                ipv4: Some(api::IpAddress {
                    ip: format!("192.0.2.{}", octets[7]),
                }),
                ipv6: Some(api::IpAddress {
                    ip: format!("2001:db8:{:x}::/64", server.id),
                }),
            }),
        }
    }

    pub(super) fn new_action(
        &mut self,
        command: &str,
        server: i64,
        started: Timestamp,
        done_at: Timestamp,
    ) -> i64 {
        let id = self.next_id();
        let error = self
            .action_failures
            .get_mut(command)
            .and_then(VecDeque::pop_front);
        self.actions.insert(
            id,
            ActionRecord {
                id,
                command: command.to_owned(),
                server,
                started,
                done_at,
                error,
            },
        );
        id
    }

    pub(super) fn api_action(&self, id: i64, now: Timestamp) -> Option<api::Action> {
        let action = self.actions.get(&id)?;
        let done = now >= action.done_at;
        let total = (action.done_at - action.started).num_milliseconds().max(1);
        let elapsed = (now - action.started).num_milliseconds().clamp(0, total);
        Some(api::Action {
            id: action.id,
            command: action.command.clone(),
            status: match (done, &action.error) {
                (false, _) => "running",
                (true, None) => "success",
                (true, Some(_)) => "error",
            }
            .to_owned(),
            progress: if done {
                100
            } else {
                u8::try_from(elapsed * 100 / total).unwrap_or(99).min(99)
            },
            started: action.started.to_rfc3339(),
            finished: done.then(|| action.done_at.to_rfc3339()),
            resources: vec![api::ActionResource {
                id: action.server,
                kind: "server".into(),
            }],
            error: action
                .error
                .as_ref()
                .filter(|_| done)
                .map(|(code, message)| api::ActionError {
                    code: code.clone(),
                    message: message.clone(),
                }),
        })
    }
}

pub(super) fn after(t: Timestamp, d: Duration) -> Timestamp {
    add_duration(t, d)
}
