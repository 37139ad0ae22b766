//! Attributes of an object as the union reports them.

/// File type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileKind {
    /// Directory.
    Dir,
    /// Regular file.
    File,
    /// Symbolic link.
    Symlink,
    /// Block device.
    BlockDev,
    /// Character device.
    CharDev,
    /// Named pipe.
    Fifo,
    /// Unix socket.
    Socket,
}

impl FileKind {
    /// From the `S_IFMT` bits of a mode.
    pub fn from_mode(mode: u32) -> Option<FileKind> {
        Some(match mode & libc_ifmt::S_IFMT {
            libc_ifmt::S_IFDIR => FileKind::Dir,
            libc_ifmt::S_IFREG => FileKind::File,
            libc_ifmt::S_IFLNK => FileKind::Symlink,
            libc_ifmt::S_IFBLK => FileKind::BlockDev,
            libc_ifmt::S_IFCHR => FileKind::CharDev,
            libc_ifmt::S_IFIFO => FileKind::Fifo,
            libc_ifmt::S_IFSOCK => FileKind::Socket,
            _ => return None,
        })
    }
}

/// The `S_IFMT` constants (identical on every Linux architecture).
mod libc_ifmt {
    pub const S_IFMT: u32 = 0o170000;
    pub const S_IFDIR: u32 = 0o040000;
    pub const S_IFREG: u32 = 0o100000;
    pub const S_IFLNK: u32 = 0o120000;
    pub const S_IFBLK: u32 = 0o060000;
    pub const S_IFCHR: u32 = 0o020000;
    pub const S_IFIFO: u32 = 0o010000;
    pub const S_IFSOCK: u32 = 0o140000;
}

/// A timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Time {
    /// Seconds since the epoch.
    pub secs: i64,
    /// Nanoseconds.
    pub nsecs: u32,
}

/// Attributes of one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    /// Inode number: layer-local from a [`crate::Layer`], union-wide from [`crate::Stack`].
    pub ino: u64,
    /// File type.
    pub kind: FileKind,
    /// Permission bits incl. setuid/setgid/sticky.
    pub perm: u16,
    /// Link count.
    pub nlink: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Device number in the kernel's `new_encode_dev` form (what FUSE carries).
    pub rdev: u32,
    /// Size in bytes.
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    /// Access time.
    pub atime: Time,
    /// Modification time.
    pub mtime: Time,
    /// Status change time.
    pub ctime: Time,
}

/// Encodes a device number as the kernel's `new_encode_dev` does.
pub fn encode_dev(major: u32, minor: u32) -> u32 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}
