//! Serde types for every JSON body in Vast's serverless protocol, named and shaped as vastai
//! 1.9.1 sends them.
//!
//! - [`auth`]: `auth_data`, the signed ticket from `/route/` ([`AuthData`], [`Cost`]).
//! - [`request`]: the client → worker body and Vast's exact 422 answers
//!   ([`parse_worker_request`], [`RequestError`]).
//! - [`route`]: client → control plane `/route/` ([`RouteRequest`], [`RouteResponse`]).
//! - [`report`]: worker → control plane `/worker_status/` and `/delete_requests/`.
//! - [`session`]: `/session/*` bodies and the small `{"ok"}`/`{"error"}` shapes.

pub mod auth;
pub mod report;
pub mod request;
pub mod route;
pub mod session;

pub use auth::{AuthData, Cost, FieldErrors, MISSING_PARAMETER};
pub use report::{
    DeleteRequests, LegacyDeleteRequests, RequestRecord, RequestStatus, StatusAnswer, WorkerStatus,
};
pub use request::{
    parse_worker_request, parse_worker_request_raw, AuthDataIssue, PayloadIssue, RawWorkerRequest,
    RequestError, WorkerRequest,
};
pub use route::{RouteReady, RouteRequest, RouteResponse, RouteWaiting};
pub use session::{
    session_close_body, ErrorBody, OkBody, SessionCreate, SessionCreated, SessionEnded,
    SessionInfo, SessionRef,
};
