//! The [`Ledger`]: what the emulator has done, for tests to assert on.

use std::collections::BTreeMap;

use serde::Serialize;

/// What the emulator has done, for tests to assert on (`GET /_emu/ledger`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Ledger {
    /// Instances ever created.
    pub created: u64,
    /// Instances ever destroyed.
    pub destroyed: u64,
    /// On-start processes ever started (boots that got as far as running a command).
    pub processes_started: u64,
    /// Instances that exist now, by id.
    pub instances: Vec<LedgerInstance>,
    /// On-start process groups still alive (including those of destroyed instances that
    /// are still being stopped).
    pub processes: Vec<LedgerProcess>,
}

impl Ledger {
    /// Instances that exist now.
    pub fn alive(&self) -> usize {
        self.instances.len()
    }

    /// On-start process groups still alive.
    pub fn processes_running(&self) -> usize {
        self.processes.len()
    }
}

/// One live instance in the [`Ledger`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerInstance {
    /// Instance id.
    pub id: u64,
    /// The offer it rents.
    pub offer_id: u64,
    /// Its label.
    pub label: Option<String>,
    /// `actual_status` as the API shows it.
    pub actual_status: String,
    /// `intended_status`.
    pub intended_status: String,
    /// Its on-start process (group leader), if one runs.
    pub pid: Option<u32>,
    /// `VAST_TCP_PORT_<container>` → loopback port, for every exposed TCP port.
    pub tcp_ports: BTreeMap<u16, u16>,
}

/// One live process group in the [`Ledger`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerProcess {
    /// The instance it belongs (or belonged) to.
    pub instance_id: u64,
    /// The group leader's pid (= the process group id).
    pub pid: u32,
}
