//! Worker → control plane reports: `POST {REPORT_ADDR}/worker_status/` and `/delete_requests/`.
//!
//! Serialization writes exactly what vastai 1.9.1's `metrics.py` sends. Deserialization is
//! lenient, because a control plane hears from PyWorkers of every vintage: absent keys and
//! `null`s take defaults, integral floats pass for integers, and the older `/delete_requests/`
//! shape is folded into the current one.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use super::auth::as_index;

fn or_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Option::<T>::deserialize(d).map(Option::unwrap_or_default)
}

/// An integer that may arrive as a float, a numeric string (shell-built bodies) or `null`.
fn lenient_i64<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let v = Option::<Value>::deserialize(d)?;
    let parsed = match &v {
        None | Some(Value::Null) => Some(0),
        Some(Value::Number(n)) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0)
                .map(|f| f as i64)
        }),
        Some(Value::String(s)) => s.trim().parse().ok(),
        Some(_) => None,
    };
    parsed.ok_or_else(|| serde::de::Error::custom("expected an integer"))
}

fn lenient_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Option::<Value>::deserialize(d)? {
        None | Some(Value::Null) => Ok(0),
        Some(v) => {
            as_index(&v).ok_or_else(|| serde::de::Error::custom("expected a non-negative integer"))
        }
    }
}

fn lenient_u64_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    let items = Option::<Vec<Value>>::deserialize(d)?.unwrap_or_default();
    items
        .iter()
        .map(|v| {
            as_index(v).ok_or_else(|| serde::de::Error::custom("expected a non-negative integer"))
        })
        .collect()
}

/// Body of `POST /worker_status/`: load, capacity and health, every ~1 s while busy and at
/// least every 10 s.
///
/// Keys and order follow vastai 1.9.1's `WorkerStatusData`, which has `disk_usage` (absolute GB
/// used on `/`) beside `additional_disk_usage`; older notes on the protocol omit it. Python
/// writes `cur_capacity`/`max_capacity` as the integer `0` and Ferry as `0.0`: both are JSON
/// numbers and the control plane reads them as floats.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WorkerStatus {
    /// Instance id, `CONTAINER_ID`.
    #[serde(deserialize_with = "lenient_i64")]
    pub id: i64,
    /// The per-instance secret from `MASTER_TOKEN`.
    #[serde(deserialize_with = "or_default")]
    pub mtoken: String,
    /// Worker framework version (Vast's PyWorker says `"1.1.0"`).
    #[serde(deserialize_with = "or_default")]
    pub version: String,
    /// Seconds from start until the model was loaded and benchmarked; `0.0` until then.
    #[serde(deserialize_with = "or_default")]
    pub loadtime: f64,
    /// Workload of every request currently queued or executing (sessions included).
    #[serde(deserialize_with = "or_default")]
    pub cur_load: f64,
    /// Workload rejected (401/429) since the last delivered report.
    #[serde(deserialize_with = "or_default")]
    pub rej_load: f64,
    /// Workload received minus cancelled since the last delivered report, floored at 0.
    #[serde(deserialize_with = "or_default")]
    pub new_load: f64,
    /// `""`, or the fatal error that makes this worker unusable.
    #[serde(deserialize_with = "or_default")]
    pub error_msg: String,
    /// Benchmarked throughput, workload units per second.
    #[serde(deserialize_with = "or_default")]
    pub max_perf: f64,
    /// Workload served successfully since the last delivered report (a sum, not a rate).
    #[serde(deserialize_with = "or_default")]
    pub cur_perf: f64,
    /// Always 0 in Vast's worker.
    #[serde(deserialize_with = "or_default")]
    pub cur_capacity: f64,
    /// Always 0 in Vast's worker.
    #[serde(deserialize_with = "or_default")]
    pub max_capacity: f64,
    /// Requests queued or executing (sessions' own requests excluded).
    #[serde(deserialize_with = "lenient_u64")]
    pub num_requests_working: u64,
    /// Distinct `reqnum`s ever received. The misspelling is Vast's wire name.
    #[serde(deserialize_with = "lenient_u64")]
    pub num_requests_recieved: u64,
    /// Growth in GB of disk used on `/` since the last delivered report.
    #[serde(deserialize_with = "or_default")]
    pub additional_disk_usage: f64,
    /// GB of disk used on `/`.
    #[serde(deserialize_with = "or_default")]
    pub disk_usage: f64,
    /// `request_idx` of every request counted in `num_requests_working`.
    #[serde(deserialize_with = "lenient_u64_list")]
    pub working_request_idxs: Vec<u64>,
    /// The worker's public base URL, `http[s]://PUBLIC_IPADDR:VAST_TCP_PORT_<WORKER_PORT>`.
    #[serde(deserialize_with = "or_default")]
    pub url: String,
    /// Ferry: the worker is cold (a Ferry control plane told it so in a report answer, see
    /// [`StatusAnswer`]) and takes no requests. Sent only when true, so Vast never sees it.
    #[serde(
        deserialize_with = "or_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub cold: bool,
    /// Ferry: the worker checks v2 tokens (`ferry_mac`, see [`crate::TokenKey`]), so the control
    /// plane may send it those instead of RSA `ferry_sig`s. Sent only when true.
    #[serde(
        deserialize_with = "or_default",
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub ferry_mac: bool,
}

/// Ferry's answer to `POST /worker_status/` (Vast answers with a body nobody reads; Ferry's
/// workers read this one leniently: any other body means "no directive").
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct StatusAnswer {
    /// Accepted.
    pub success: bool,
    /// Directive for a joined worker: stay cold (stop taking requests, report not ready) while
    /// true, warm up when false.
    pub cold: bool,
    /// This control plane issues v2 tokens (`ferry_mac`) to workers whose reports say they
    /// check them ([`WorkerStatus::ferry_mac`]). Sent only when true.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub ferry_mac: bool,
}

/// A request's final state in `/delete_requests/`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum RequestStatus {
    /// Parsed, not yet admitted.
    Created,
    /// Admitted: queued or executing.
    Started,
    /// The model server answered (whatever its status code).
    Success,
    /// Forwarding failed.
    Error,
    /// The client went away first.
    Cancelled,
    /// Refused: bad signature, queue or session limit.
    Rejected,
    /// A session reservation still open.
    SessionActive,
}

impl RequestStatus {
    /// Every status, in declaration order.
    pub const ALL: [RequestStatus; 7] = [
        RequestStatus::Created,
        RequestStatus::Started,
        RequestStatus::Success,
        RequestStatus::Error,
        RequestStatus::Cancelled,
        RequestStatus::Rejected,
        RequestStatus::SessionActive,
    ];

    /// The wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            RequestStatus::Created => "Created",
            RequestStatus::Started => "Started",
            RequestStatus::Success => "Success",
            RequestStatus::Error => "Error",
            RequestStatus::Cancelled => "Cancelled",
            RequestStatus::Rejected => "Rejected",
            RequestStatus::SessionActive => "SessionActive",
        }
    }

    /// The `success` flag Vast sends with this status: true for `Success` and also for
    /// `Cancelled` (the worker did nothing wrong), false otherwise.
    pub fn success(self) -> bool {
        matches!(self, RequestStatus::Success | RequestStatus::Cancelled)
    }

    fn parse(s: &str) -> Option<RequestStatus> {
        RequestStatus::ALL.into_iter().find(|st| st.as_str() == s)
    }
}

impl fmt::Display for RequestStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One finished request's lifetime, timestamps in Unix seconds (0.0 where a stage never ran).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestRecord {
    /// The request's `request_idx` from its `auth_data`.
    pub request_idx: u64,
    /// See [`RequestStatus::success`].
    pub success: bool,
    /// Final state.
    pub status: RequestStatus,
    /// When the worker received it.
    pub entered_queue_at: f64,
    /// When forwarding to the model began.
    pub work_started_at: f64,
    /// When the model answered or forwarding failed; 0.0 for cancelled and rejected requests.
    pub work_completed_at: f64,
}

/// Lenient reading: a missing or unknown `status` is derived from `success` (Success/Error), a
/// missing `success` from the status, missing timestamps are 0.0.
impl<'de> Deserialize<'de> for RequestRecord {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<RequestRecord, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(deserialize_with = "lenient_u64")]
            request_idx: u64,
            #[serde(default, deserialize_with = "or_default")]
            success: Option<bool>,
            #[serde(default, deserialize_with = "or_default")]
            status: Option<String>,
            #[serde(default, deserialize_with = "or_default")]
            entered_queue_at: f64,
            #[serde(default, deserialize_with = "or_default")]
            work_started_at: f64,
            #[serde(default, deserialize_with = "or_default")]
            work_completed_at: f64,
        }
        let w = Wire::deserialize(d)?;
        let status = w.status.as_deref().and_then(RequestStatus::parse);
        let (status, success) = match (status, w.success) {
            (Some(st), Some(ok)) => (st, ok),
            (Some(st), None) => (st, st.success()),
            (None, Some(true)) => (RequestStatus::Success, true),
            (None, ok) => (RequestStatus::Error, ok.unwrap_or(false)),
        };
        Ok(RequestRecord {
            request_idx: w.request_idx,
            success,
            status,
            entered_queue_at: w.entered_queue_at,
            work_started_at: w.work_started_at,
            work_completed_at: w.work_completed_at,
        })
    }
}

/// Body of `POST /delete_requests/`: finished requests, batched about once a second.
///
/// Reading also accepts the pre-April-2026 shape `{"worker_id", "mtoken", "request_idxs": [..],
/// "success": bool}` ([`LegacyDeleteRequests`]); its indexes become records with status
/// `Success` or `Error` and zero timestamps. A body carrying both shapes yields both sets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DeleteRequests {
    /// Instance id, `CONTAINER_ID`.
    pub worker_id: i64,
    /// The per-instance secret from `MASTER_TOKEN`.
    pub mtoken: String,
    /// The finished requests.
    pub requests: Vec<RequestRecord>,
}

/// The `/delete_requests/` body Vast's workers sent from November 2025 to April 2026: one POST
/// per outcome, successes and failures separately.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LegacyDeleteRequests {
    /// Instance id, `CONTAINER_ID`.
    #[serde(default, deserialize_with = "lenient_i64")]
    pub worker_id: i64,
    /// The per-instance secret from `MASTER_TOKEN`.
    #[serde(default, deserialize_with = "or_default")]
    pub mtoken: String,
    /// The finished requests' `request_idx`s.
    #[serde(default, deserialize_with = "lenient_u64_list")]
    pub request_idxs: Vec<u64>,
    /// Whether they all succeeded.
    #[serde(default, deserialize_with = "or_default")]
    pub success: bool,
}

fn legacy_record(request_idx: u64, success: bool) -> RequestRecord {
    RequestRecord {
        request_idx,
        success,
        status: if success {
            RequestStatus::Success
        } else {
            RequestStatus::Error
        },
        entered_queue_at: 0.0,
        work_started_at: 0.0,
        work_completed_at: 0.0,
    }
}

impl From<LegacyDeleteRequests> for DeleteRequests {
    fn from(l: LegacyDeleteRequests) -> DeleteRequests {
        DeleteRequests {
            worker_id: l.worker_id,
            mtoken: l.mtoken,
            requests: l
                .request_idxs
                .into_iter()
                .map(|idx| legacy_record(idx, l.success))
                .collect(),
        }
    }
}

impl<'de> Deserialize<'de> for DeleteRequests {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<DeleteRequests, D::Error> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(default, deserialize_with = "lenient_i64")]
            worker_id: i64,
            #[serde(default, deserialize_with = "or_default")]
            mtoken: String,
            #[serde(default, deserialize_with = "or_default")]
            requests: Vec<RequestRecord>,
            #[serde(default, deserialize_with = "lenient_u64_list")]
            request_idxs: Vec<u64>,
            #[serde(default, deserialize_with = "or_default")]
            success: bool,
        }
        let w = Wire::deserialize(d)?;
        let mut requests = w.requests;
        requests.extend(
            w.request_idxs
                .into_iter()
                .map(|idx| legacy_record(idx, w.success)),
        );
        Ok(DeleteRequests {
            worker_id: w.worker_id,
            mtoken: w.mtoken,
            requests,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn worker_status_keys_in_vast_order() {
        let s = WorkerStatus {
            id: 42,
            mtoken: "tok".into(),
            version: "1.1.0".into(),
            loadtime: 12.5,
            cur_load: 300.0,
            rej_load: 0.0,
            new_load: 100.0,
            error_msg: String::new(),
            max_perf: 50.0,
            cur_perf: 100.0,
            cur_capacity: 0.0,
            max_capacity: 0.0,
            num_requests_working: 3,
            num_requests_recieved: 9,
            additional_disk_usage: 0.25,
            disk_usage: 40.0,
            working_request_idxs: vec![7, 8, 9],
            url: "https://1.2.3.4:5".into(),
            cold: false,
            ferry_mac: false,
        };
        let text = serde_json::to_string(&s).expect("ser");
        assert_eq!(
            text,
            r#"{"id":42,"mtoken":"tok","version":"1.1.0","loadtime":12.5,"cur_load":300.0,"rej_load":0.0,"new_load":100.0,"error_msg":"","max_perf":50.0,"cur_perf":100.0,"cur_capacity":0.0,"max_capacity":0.0,"num_requests_working":3,"num_requests_recieved":9,"additional_disk_usage":0.25,"disk_usage":40.0,"working_request_idxs":[7,8,9],"url":"https://1.2.3.4:5"}"#
        );
        let back: WorkerStatus = serde_json::from_str(&text).expect("de");
        assert_eq!(back, s);
        // The capability is sent only when set, last.
        let v2 = WorkerStatus {
            ferry_mac: true,
            ..s
        };
        let text = serde_json::to_string(&v2).expect("ser");
        assert!(text.ends_with(r#","url":"https://1.2.3.4:5","ferry_mac":true}"#));
        let back: WorkerStatus = serde_json::from_str(&text).expect("de");
        assert!(back.ferry_mac);
    }

    #[test]
    fn worker_status_reads_old_and_partial_bodies() {
        // start_server.sh's failure beacon.
        let beacon: WorkerStatus = serde_json::from_value(json!({
            "id": 7, "mtoken": "", "version": "0", "error_msg": "boom", "url": ""
        }))
        .expect("beacon");
        assert_eq!((beacon.id, beacon.error_msg.as_str()), (7, "boom"));
        assert_eq!(beacon.max_perf, 0.0);
        // 2024 PyWorker: no mtoken/version, integer zeros, nulls, id as a string.
        let old: WorkerStatus = serde_json::from_value(json!({
            "id": "12", "loadtime": null, "cur_load": 0, "error_msg": null, "max_perf": 3,
            "cur_perf": 1.5, "cur_capacity": 0, "max_capacity": 0, "num_requests_working": 2.0,
            "num_requests_recieved": 4, "additional_disk_usage": 0, "url": "http://x:1",
            "overloaded": false
        }))
        .expect("old");
        assert_eq!(old.id, 12);
        assert_eq!(old.max_perf, 3.0);
        assert_eq!(old.num_requests_working, 2);
        assert!(old.working_request_idxs.is_empty());
        assert!(serde_json::from_value::<WorkerStatus>(json!({"id": [1]})).is_err());
    }

    #[test]
    fn status_strings_and_success() {
        let names: Vec<String> = RequestStatus::ALL
            .iter()
            .map(|s| {
                serde_json::to_value(s)
                    .expect("ser")
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect();
        assert_eq!(
            names,
            [
                "Created",
                "Started",
                "Success",
                "Error",
                "Cancelled",
                "Rejected",
                "SessionActive"
            ]
        );
        for s in RequestStatus::ALL {
            assert_eq!(s.to_string(), s.as_str());
            let back: RequestStatus = serde_json::from_value(json!(s.as_str())).expect("de");
            assert_eq!(back, s);
        }
        let ok: Vec<_> = RequestStatus::ALL
            .into_iter()
            .filter(|s| s.success())
            .collect();
        assert_eq!(ok, [RequestStatus::Success, RequestStatus::Cancelled]);
    }

    #[test]
    fn delete_requests_current_shape() {
        let body = DeleteRequests {
            worker_id: 42,
            mtoken: "tok".into(),
            requests: vec![RequestRecord {
                request_idx: 25,
                success: true,
                status: RequestStatus::Success,
                entered_queue_at: 1765856286.1,
                work_started_at: 1765856286.2,
                work_completed_at: 1765856286.9,
            }],
        };
        let text = serde_json::to_string(&body).expect("ser");
        assert_eq!(
            text,
            r#"{"worker_id":42,"mtoken":"tok","requests":[{"request_idx":25,"success":true,"status":"Success","entered_queue_at":1765856286.1,"work_started_at":1765856286.2,"work_completed_at":1765856286.9}]}"#
        );
        let back: DeleteRequests = serde_json::from_str(&text).expect("de");
        assert_eq!(back, body);
    }

    #[test]
    fn delete_requests_legacy_shape() {
        let v = json!({"worker_id": 42, "mtoken": "tok", "request_idxs": [1, 2], "success": false});
        let legacy: LegacyDeleteRequests = serde_json::from_value(v.clone()).expect("legacy");
        let body: DeleteRequests = serde_json::from_value(v).expect("folded");
        assert_eq!(body, DeleteRequests::from(legacy));
        assert_eq!(body.requests.len(), 2);
        assert_eq!(body.requests[1].request_idx, 2);
        assert_eq!(body.requests[1].status, RequestStatus::Error);
        assert!(!body.requests[1].success);
    }

    #[test]
    fn record_leniency() {
        let r: RequestRecord =
            serde_json::from_value(json!({"request_idx": 3, "status": "Cancelled"})).expect("de");
        assert!(r.success);
        let r: RequestRecord =
            serde_json::from_value(json!({"request_idx": 3, "success": true, "status": "Later"}))
                .expect("de");
        assert_eq!(r.status, RequestStatus::Success);
        assert!(serde_json::from_value::<RequestRecord>(json!({"status": "Success"})).is_err());
    }
}
