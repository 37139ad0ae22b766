//! How owners on disk are shown through the mount: `uidmapping`/`gidmapping` ranges,
//! `squash_to_uid`/`squash_to_gid`/`squash_to_root`, and the override-stat xattrs of
//! `xattr_permissions` (mount_program.md §3–4).

/// One `disk:shown:count` range (c/storage writes ContainerID:HostID:Size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRange {
    /// First id as stored on disk.
    pub disk: u32,
    /// First id as shown by the mount.
    pub shown: u32,
    /// Number of ids.
    pub count: u32,
}

/// A set of ranges; ids outside every range show as the overflow id.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdMap {
    /// Ranges, in the order given.
    pub ranges: Vec<IdRange>,
}

impl IdMap {
    /// Parses `A:B:L[:A:B:L...]`; empty fields are skipped (c/storage prepends `:`).
    pub fn parse(spec: &str) -> Result<IdMap, String> {
        let fields: Vec<&str> = spec.split(':').filter(|f| !f.is_empty()).collect();
        if fields.len() % 3 != 0 {
            return Err(format!("id mapping {spec:?}: want disk:shown:count triples"));
        }
        let mut ranges = Vec::new();
        for t in fields.chunks(3) {
            let num = |s: &str| s.parse::<u32>().map_err(|_| format!("id mapping {spec:?}: {s:?} is not a number"));
            let r = IdRange { disk: num(t[0])?, shown: num(t[1])?, count: num(t[2])? };
            if r.disk.checked_add(r.count).is_none() || r.shown.checked_add(r.count).is_none() {
                return Err(format!("id mapping {spec:?}: range overflows"));
            }
            ranges.push(r);
        }
        Ok(IdMap { ranges })
    }

    /// The shown id of a disk id, or `None` when no range covers it.
    pub fn to_shown(&self, disk: u32) -> Option<u32> {
        self.ranges.iter().find(|r| disk >= r.disk && disk - r.disk < r.count).map(|r| r.shown + (disk - r.disk))
    }
}

impl IdMap {
    /// The disk id of a shown id, or `None` when no range covers it.
    pub fn to_disk(&self, shown: u32) -> Option<u32> {
        self.ranges.iter().find(|r| shown >= r.shown && shown - r.shown < r.count).map(|r| r.disk + (shown - r.shown))
    }
}

/// Which override-stat xattr holds the real owner and mode (`xattr_permissions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OverrideStat {
    /// Not used.
    #[default]
    Off,
    /// `security.fuseoverlayfs.override_stat` (privileged mode, `xattr_permissions=1`).
    Privileged,
    /// `user.containers.override_stat` (containers mode, `xattr_permissions=2`).
    Containers,
}

impl OverrideStat {
    /// The xattr name holding `uid:gid:mode[:type]`.
    pub fn xattr(self) -> Option<&'static [u8]> {
        match self {
            OverrideStat::Off => None,
            OverrideStat::Privileged => Some(b"security.fuseoverlayfs.override_stat"),
            OverrideStat::Containers => Some(b"user.containers.override_stat"),
        }
    }
}

/// Parses an override-stat value `uid:gid:mode[:type]` (mode octal) into (uid, gid, perm).
pub fn parse_override(value: &[u8]) -> Option<(u32, u32, u16)> {
    let s = std::str::from_utf8(value).ok()?;
    let mut f = s.trim_end_matches('\0').split(':');
    let uid = f.next()?.parse().ok()?;
    let gid = f.next()?.parse().ok()?;
    let mode = u32::from_str_radix(f.next()?, 8).ok()?;
    Some((uid, gid, (mode & 0o7777) as u16))
}

/// Everything that changes how owners are shown.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// uid ranges; empty = identity.
    pub uids: IdMap,
    /// gid ranges; empty = identity.
    pub gids: IdMap,
    /// Show every object with this uid.
    pub squash_uid: Option<u32>,
    /// Show every object with this gid.
    pub squash_gid: Option<u32>,
    /// Owner and mode from an xattr instead of the inode.
    pub override_stat: OverrideStat,
    /// Id shown for disk ids no range covers (`/proc/sys/kernel/overflowuid`).
    pub overflow_uid: u32,
    /// Same for gids.
    pub overflow_gid: u32,
}

impl Default for Identity {
    fn default() -> Self {
        Identity {
            uids: IdMap::default(),
            gids: IdMap::default(),
            squash_uid: None,
            squash_gid: None,
            override_stat: OverrideStat::Off,
            overflow_uid: 65534,
            overflow_gid: 65534,
        }
    }
}

impl Identity {
    /// The uid shown for a disk uid.
    pub fn uid(&self, disk: u32) -> u32 {
        if let Some(u) = self.squash_uid {
            return u;
        }
        if self.uids.ranges.is_empty() {
            return disk;
        }
        self.uids.to_shown(disk).unwrap_or(self.overflow_uid)
    }

    /// The uid written to disk for an owner the mount shows (new objects, chown).
    pub fn disk_uid(&self, shown: u32) -> u32 {
        if self.uids.ranges.is_empty() {
            return shown;
        }
        self.uids.to_disk(shown).unwrap_or(self.overflow_uid)
    }

    /// The gid written to disk for a group the mount shows.
    pub fn disk_gid(&self, shown: u32) -> u32 {
        if self.gids.ranges.is_empty() {
            return shown;
        }
        self.gids.to_disk(shown).unwrap_or(self.overflow_gid)
    }

    /// The gid shown for a disk gid.
    pub fn gid(&self, disk: u32) -> u32 {
        if let Some(g) = self.squash_gid {
            return g;
        }
        if self.gids.ranges.is_empty() {
            return disk;
        }
        self.gids.to_shown(disk).unwrap_or(self.overflow_gid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn c_storage_mapping_with_leading_colon() {
        let m = IdMap::parse(":0:1:1000:1000:0:1:1001:1001:64536").unwrap();
        assert_eq!(m.ranges.len(), 3);
        assert_eq!(m.to_shown(0), Some(1));
        assert_eq!(m.to_shown(1000), Some(0));
        assert_eq!(m.to_shown(1001), Some(1001));
        assert_eq!(m.to_shown(70000), None);
        assert!(IdMap::parse("0:1").is_err());
        assert!(IdMap::parse("0:x:1").is_err());
    }

    #[test]
    fn identity_rules() {
        let id = Identity { uids: IdMap::parse("0:100000:10").unwrap(), ..Identity::default() };
        assert_eq!(id.uid(3), 100_003);
        assert_eq!(id.uid(50), 65534);
        assert_eq!(id.gid(50), 50);
        let sq = Identity { squash_uid: Some(0), ..id };
        assert_eq!(sq.uid(3), 0);
        assert_eq!(parse_override(b"1000:1000:0755:dir"), Some((1000, 1000, 0o755)));
        assert_eq!(parse_override(b"garbage"), None);
    }
}
