//! Report bodies the control plane reads from workers: `/worker_status/` ([`WorkerStatus`]) and
//! `/delete_requests/` ([`DeleteRequests`], current and pre-April-2026 shapes), as
//! `api::worker` deserializes them (`serde_json::from_slice` on the raw body).
//!
//! Checks, for each type: an accepted body serializes and parses back to the same value (the
//! lenient reader accepts what the strict writer writes, and loses nothing; floats to the last
//! bit or so, see `ferry_fuzz::same_json`); a record's
//! `success` flag matches its status when the body gave only one of them; a legacy body read as
//! [`DeleteRequests`] gives one record per index.

#![no_main]

use ferry_fuzz::assert_same;
use ferry_protocol::{
    DeleteRequests, LegacyDeleteRequests, RequestRecord, RequestStatus, WorkerStatus,
};
use libfuzzer_sys::fuzz_target;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

fn round_trip<T>(data: &[u8]) -> Option<T>
where
    T: DeserializeOwned + Serialize + PartialEq + std::fmt::Debug,
{
    let v: T = serde_json::from_slice(data).ok()?;
    let text = serde_json::to_vec(&v).expect("serializes");
    let back: T = serde_json::from_slice(&text).unwrap_or_else(|e| {
        panic!(
            "own output refused: {e}: {}",
            String::from_utf8_lossy(&text)
        )
    });
    assert_same(&back, &v);
    Some(v)
}

fuzz_target!(|data: &[u8]| {
    let _ = round_trip::<WorkerStatus>(data);
    let current = round_trip::<DeleteRequests>(data);
    let legacy = round_trip::<LegacyDeleteRequests>(data);
    // (Fields a type ignores are skipped unchecked, invalid UTF-8 included, so a body can be a
    // report and not a `Value`.)
    let value = serde_json::from_slice::<Value>(data).ok();
    if let (Some(r), Some(v)) = (round_trip::<RequestRecord>(data), &value) {
        let has_status = v
            .get("status")
            .and_then(Value::as_str)
            .is_some_and(|s| RequestStatus::ALL.iter().any(|st| st.as_str() == s));
        let has_success = v.get("success").is_some_and(Value::is_boolean);
        if has_status && !has_success {
            assert_eq!(r.success, r.status.success(), "{r:?}");
        }
        if !has_status {
            assert!(matches!(
                r.status,
                RequestStatus::Success | RequestStatus::Error
            ));
            assert_eq!(r.status == RequestStatus::Success, r.success, "{r:?}");
        }
    }
    // A legacy-only body becomes one record per index, all with its success flag.
    if let (Some(d), Some(l), Some(v)) = (current, legacy, &value) {
        let no_records = v.get("requests").is_none_or(Value::is_null);
        if no_records {
            assert_eq!(d, DeleteRequests::from(l));
        }
    }
});
