//! [`EmuConfig`]: what an emulator is started with.

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::offers::{default_offers, Offer};

/// Default delay from a (re)start until the on-start command runs.
pub const DEFAULT_BOOT_DELAY: Duration = Duration::from_secs(1);

/// Default time a stopped process group gets between SIGTERM and SIGKILL.
pub const DEFAULT_STOP_GRACE: Duration = Duration::from_secs(3);

/// How to start an [`crate::Emulator`].
///
/// `EmuConfig::new("key")` gives the defaults: `127.0.0.1:0`, the built-in catalogue
/// ([`default_offers`]), a 1 s boot delay, a 3 s stop grace and a fresh state directory
/// under the system's temporary directory.
#[derive(Clone)]
pub struct EmuConfig {
    /// Where to listen; must be a loopback address (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The one API key the emulated account accepts (as `Authorization: Bearer KEY` or
    /// `?api_key=KEY`).
    pub api_key: String,
    /// The offer catalogue.
    pub offers: Vec<Offer>,
    /// Delay from a (re)start until the on-start command runs; changeable later with
    /// [`crate::Knobs::set_boot_delay`].
    pub boot_delay: Duration,
    /// Time a stopped process group gets between SIGTERM and SIGKILL.
    pub stop_grace: Duration,
    /// Where instance directories (working directory and `onstart.log`) go; `None` makes a
    /// fresh directory under the system's temporary directory, removed by
    /// [`crate::Emulator::shutdown`] (kept when the emulator is dropped without one, so a
    /// failed test leaves its logs behind).
    pub state_dir: Option<PathBuf>,
}

impl EmuConfig {
    /// The defaults, with `api_key`.
    pub fn new(api_key: impl Into<String>) -> EmuConfig {
        EmuConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_key: api_key.into(),
            offers: default_offers(),
            boot_delay: DEFAULT_BOOT_DELAY,
            stop_grace: DEFAULT_STOP_GRACE,
            state_dir: None,
        }
    }
}

impl fmt::Debug for EmuConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EmuConfig")
            .field("listen", &self.listen)
            .field("api_key", &"***")
            .field("offers", &self.offers.len())
            .field("boot_delay", &self.boot_delay)
            .field("stop_grace", &self.stop_grace)
            .field("state_dir", &self.state_dir)
            .finish()
    }
}
