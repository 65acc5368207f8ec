//! The kernel side of app logs (`hoptrace run --app-logs`): the load-time switch and the
//! map of selected processes.

use std::os::fd::AsFd as _;

use anyhow::{anyhow, Context, Result};
use aya::maps::{HashMap, Map, MapData};
use aya::Ebpf;

/// The programs' global that turns app log capture on (frozen at load).
pub(super) const GLOBAL: &str = "APP_LOGS";

/// The processes whose stdout/stderr writes the kernel captures (`APP_LOG_TGIDS`).
pub struct AppLogTargets {
    map: HashMap<MapData, u32, u8>,
}

impl AppLogTargets {
    /// A handle of its own on the map (a duplicate of the loader's fd, as for `DROPS`).
    pub fn open(ebpf: &Ebpf) -> Result<Self> {
        let map = ebpf.map("APP_LOG_TGIDS").context("APP_LOG_TGIDS map missing")?;
        let data = match map {
            Map::HashMap(d) => MapData::from_fd(d.fd().as_fd().try_clone_to_owned().context("dup of APP_LOG_TGIDS")?)?,
            _ => return Err(anyhow!("APP_LOG_TGIDS is not a hash map")),
        };
        Ok(Self { map: HashMap::try_from(Map::HashMap(data))? })
    }

    /// Captures process `pid`'s writes from now on; false when the map is full.
    pub fn select(&mut self, pid: u32) -> bool {
        self.map.insert(pid, 1, 0).is_ok()
    }

    pub fn unselect(&mut self, pid: u32) {
        let _ = self.map.remove(&pid);
    }
}
