//! The Hetzner Cloud API v1 shapes Kiln uses (a subset of the public documentation's
//! request and response bodies), shared by the client and the fake server.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// `POST /v1/servers` request body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CreateServerRequest {
    /// Server name (an RFC 1123 hostname, unique per project).
    pub name: String,
    /// Server type name, e.g. `cx23`.
    pub server_type: String,
    /// Image name or id, e.g. `debian-12`.
    pub image: String,
    /// Location name, e.g. `nbg1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// User-defined labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Cloud-init user data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    /// Start the server once created (the API's default is `true`).
    #[serde(default = "default_true")]
    pub start_after_create: bool,
}

fn default_true() -> bool {
    true
}

/// `POST /v1/servers` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CreateServerResponse {
    /// The server, as far as it exists yet.
    pub server: Server,
    /// The `create_server` action.
    pub action: Action,
    /// Actions that follow (for example `start_server`).
    #[serde(default)]
    pub next_actions: Vec<Action>,
    /// Root password when no SSH key was given (Kiln never uses it).
    #[serde(default)]
    pub root_password: Option<String>,
}

/// A server (the fields Kiln reads, plus what the fake fills for realism).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Server {
    /// The server's id.
    pub id: i64,
    /// Its name.
    pub name: String,
    /// `initializing`, `starting`, `running`, `stopping`, `off`, `deleting`, `migrating`,
    /// `rebuilding` or `unknown`.
    pub status: String,
    /// When it was created (ISO 8601).
    pub created: String,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its server type.
    #[serde(default)]
    pub server_type: Option<NamedRef>,
    /// Its image.
    #[serde(default)]
    pub image: Option<NamedRef>,
    /// Its datacenter (with its location).
    #[serde(default)]
    pub datacenter: Option<Datacenter>,
    /// Its public addresses.
    #[serde(default)]
    pub public_net: Option<PublicNet>,
}

/// An object referred to by id and name (server type, image, location).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedRef {
    /// Its id.
    pub id: i64,
    /// Its name.
    pub name: String,
}

/// A datacenter, with the location it is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datacenter {
    /// Its id.
    pub id: i64,
    /// Its name, e.g. `nbg1-dc3`.
    pub name: String,
    /// Its location.
    pub location: NamedRef,
}

/// A server's public network addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublicNet {
    /// Its IPv4 address, if it has one.
    #[serde(default)]
    pub ipv4: Option<IpAddress>,
    /// Its IPv6 network, if it has one.
    #[serde(default)]
    pub ipv6: Option<IpAddress>,
}

/// One IP address (or IPv6 network).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpAddress {
    /// The address.
    pub ip: String,
}

/// An asynchronous action (`create_server`, `start_server`, `delete_server`, …).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Action {
    /// Its id.
    pub id: i64,
    /// What it does.
    pub command: String,
    /// `running`, `success` or `error`.
    pub status: String,
    /// Progress in percent.
    pub progress: u8,
    /// When it started (ISO 8601).
    pub started: String,
    /// When it finished, once it has.
    #[serde(default)]
    pub finished: Option<String>,
    /// The resources it acts on.
    #[serde(default)]
    pub resources: Vec<ActionResource>,
    /// Why it failed, when `status` is `error`.
    #[serde(default)]
    pub error: Option<ActionError>,
}

/// A resource an action acts on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionResource {
    /// Its id.
    pub id: i64,
    /// Its type, e.g. `server`.
    #[serde(rename = "type")]
    pub kind: String,
}

/// Why an action failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionError {
    /// Hetzner's error code.
    pub code: String,
    /// Hetzner's message.
    pub message: String,
}

/// `GET /v1/actions/{id}` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionResponse {
    /// The action.
    pub action: Action,
}

/// `GET /v1/servers/{id}` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerResponse {
    /// The server.
    pub server: Server,
}

/// `DELETE /v1/servers/{id}` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeleteServerResponse {
    /// The `delete_server` action.
    pub action: Action,
}

/// `GET /v1/servers` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListServersResponse {
    /// One page of servers.
    pub servers: Vec<Server>,
    /// Pagination.
    pub meta: Meta,
}

/// The `meta` object of list responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Where this page is.
    pub pagination: Pagination,
}

/// Pagination of list responses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pagination {
    /// This page (from 1).
    pub page: u32,
    /// Entries per page.
    pub per_page: u32,
    /// The page before, if any.
    #[serde(default)]
    pub previous_page: Option<u32>,
    /// The page after, if any.
    #[serde(default)]
    pub next_page: Option<u32>,
    /// The last page, if known.
    #[serde(default)]
    pub last_page: Option<u32>,
    /// How many entries there are, if known.
    #[serde(default)]
    pub total_entries: Option<u64>,
}

/// The body of every error response: `{"error": {"code", "message", "details"}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorResponse {
    /// The error.
    pub error: ErrorBody,
}

/// Hetzner's error object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Machine-readable code, e.g. `invalid_input`, `resource_limit_exceeded`.
    pub code: String,
    /// Human-readable message.
    pub message: String,
    /// Code-specific details.
    #[serde(default)]
    pub details: Option<serde_json::Value>,
}
