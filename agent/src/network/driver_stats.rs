//! A driver's own statistics (`ethtool -S`), read with the `SIOCETHTOOL` ioctl: how many
//! there are (`ETHTOOL_GSSET_INFO`), their names (`ETHTOOL_GSTRINGS`, read once per
//! interface) and their values (`ETHTOOL_GSTATS`, at each scrape). Netlink has no
//! message for these: the ioctl, which names the device, is the only way.
//!
//! The kernel writes as many names or values as the driver has at the moment of the
//! call, whatever the size the caller passed. A count that grew since the caller asked
//! (channels added between two ioctls) would write past the caller's buffer; here the
//! buffer is followed by an inaccessible page, so such a write fails (EFAULT) instead.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::netlink::ParseError;

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GSTRINGS: u32 = 0x1b;
const ETHTOOL_GSTATS: u32 = 0x1d;
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// The string set of the driver statistics.
const ETH_SS_STATS: u32 = 1;
/// Bytes of one statistic's name, NUL-padded.
pub const ETH_GSTRING_LEN: usize = 32;
/// More statistics than this is not a driver we believe.
const MAX_KERNEL_COUNT: u32 = 1 << 16;

/// Layout of `struct ethtool_sset_info` with one data word.
const SSET_INFO_LEN: usize = 20;
/// Bytes before the names of `struct ethtool_gstrings`.
const GSTRINGS_HEADER: usize = 12;
/// Bytes before the values of `struct ethtool_stats`.
const GSTATS_HEADER: usize = 8;

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(bytes[at..at + 4].try_into().expect("4 bytes"))
}

fn need(bytes: &[u8], needed: usize) -> Result<(), ParseError> {
    if bytes.len() < needed {
        return Err(ParseError::Truncated {
            needed,
            available: bytes.len(),
        });
    }
    Ok(())
}

/// The statistics count in a `ETHTOOL_GSSET_INFO` reply: None when the driver has no
/// statistics set (its bit is cleared in the returned mask).
pub fn parse_set_info(reply: &[u8]) -> Result<Option<u32>, ParseError> {
    need(reply, SSET_INFO_LEN)?;
    let mask = u64::from_ne_bytes(reply[8..16].try_into().expect("8 bytes"));
    if mask & (1 << ETH_SS_STATS) == 0 {
        return Ok(None);
    }
    Ok(Some(u32_at(reply, 16)).filter(|&count| count > 0))
}

/// The names in a `ETHTOOL_GSTRINGS` reply: the first `keep` go into `names` (cleared
/// first); returns how many the kernel wrote.
pub fn parse_names(reply: &[u8], keep: usize, names: &mut Vec<String>) -> Result<u32, ParseError> {
    need(reply, GSTRINGS_HEADER)?;
    let count = u32_at(reply, 8);
    need(reply, GSTRINGS_HEADER + count as usize * ETH_GSTRING_LEN)?;
    names.clear();
    for raw in reply[GSTRINGS_HEADER..]
        .chunks_exact(ETH_GSTRING_LEN)
        .take((count as usize).min(keep))
    {
        let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
        names.push(String::from_utf8_lossy(&raw[..end]).trim().to_owned());
    }
    Ok(count)
}

/// The values in a `ETHTOOL_GSTATS` reply: the first `keep` go into `values` (cleared
/// first); returns how many the kernel wrote.
pub fn parse_values(reply: &[u8], keep: usize, values: &mut Vec<u64>) -> Result<u32, ParseError> {
    need(reply, GSTATS_HEADER)?;
    let count = u32_at(reply, 4);
    need(reply, GSTATS_HEADER + count as usize * 8)?;
    values.clear();
    values.extend(
        reply[GSTATS_HEADER..]
            .chunks_exact(8)
            .take((count as usize).min(keep))
            .map(|chunk| u64::from_ne_bytes(chunk.try_into().expect("8 bytes"))),
    );
    Ok(count)
}

/// What reading a device's driver statistics can fail with.
#[derive(Debug, thiserror::Error)]
pub enum DriverStatsError {
    #[error("SIOCETHTOOL: {0}")]
    Io(#[from] io::Error),
    #[error("malformed ethtool reply: {0}")]
    Parse(#[from] ParseError),
    #[error("the driver reports {0} statistics")]
    TooMany(u32),
}

impl DriverStatsError {
    /// True when the driver does not support the request.
    pub fn unsupported(&self) -> bool {
        matches!(self, Self::Io(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP))
    }
}

/// Reads driver statistics in the network namespace of the thread that opened it.
pub struct DriverStatsReader {
    socket: OwnedFd,
    buffer: GuardedBuffer,
}

impl DriverStatsReader {
    /// Opens the socket the ioctls go through.
    pub fn open() -> io::Result<Self> {
        // SAFETY: socket has no memory preconditions; a valid result is a new descriptor.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: fd was just returned by socket and is owned by nothing else.
            socket: unsafe { OwnedFd::from_raw_fd(fd) },
            buffer: GuardedBuffer::new(4096)?,
        })
    }

    /// How many statistics `device` has: None when its driver has none.
    pub fn count(&mut self, device: &str) -> Result<Option<u32>, DriverStatsError> {
        let request = self.buffer.prepare(SSET_INFO_LEN)?;
        request[0..4].copy_from_slice(&ETHTOOL_GSSET_INFO.to_ne_bytes());
        request[8..16].copy_from_slice(&(1u64 << ETH_SS_STATS).to_ne_bytes());
        match self.ioctl(device) {
            Err(error) if error.unsupported() => return Ok(None),
            other => other?,
        }
        let count = parse_set_info(self.buffer.bytes(SSET_INFO_LEN))?;
        match count {
            Some(count) if count > MAX_KERNEL_COUNT => Err(DriverStatsError::TooMany(count)),
            count => Ok(count),
        }
    }

    /// Reads the names of `device`'s `count` statistics, the first `keep` into `names`;
    /// returns how many the driver has now (another count than `count` means the names
    /// are not the ones [`DriverStatsReader::count`] counted: ask again).
    pub fn names(
        &mut self,
        device: &str,
        count: u32,
        keep: usize,
        names: &mut Vec<String>,
    ) -> Result<u32, DriverStatsError> {
        let length = GSTRINGS_HEADER + count as usize * ETH_GSTRING_LEN;
        let request = self.buffer.prepare(length)?;
        request[0..4].copy_from_slice(&ETHTOOL_GSTRINGS.to_ne_bytes());
        request[4..8].copy_from_slice(&ETH_SS_STATS.to_ne_bytes());
        request[8..12].copy_from_slice(&count.to_ne_bytes());
        self.ioctl(device)?;
        Ok(parse_names(self.buffer.bytes(length), keep, names)?)
    }

    /// Reads the values of `device`'s `count` statistics, the first `keep` into `values`;
    /// returns how many the driver has now.
    pub fn values(
        &mut self,
        device: &str,
        count: u32,
        keep: usize,
        values: &mut Vec<u64>,
    ) -> Result<u32, DriverStatsError> {
        let length = GSTATS_HEADER + count as usize * 8;
        let request = self.buffer.prepare(length)?;
        request[0..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
        request[4..8].copy_from_slice(&count.to_ne_bytes());
        self.ioctl(device)?;
        Ok(parse_values(self.buffer.bytes(length), keep, values)?)
    }

    fn ioctl(&mut self, device: &str) -> Result<(), DriverStatsError> {
        let name = device.as_bytes();
        if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{device:?} is not an interface name"),
            )
            .into());
        }
        // SAFETY: an all-zero ifreq is valid (empty name, null pointers).
        let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
        for (slot, &byte) in request.ifr_name.iter_mut().zip(name) {
            *slot = byte as libc::c_char;
        }
        request.ifr_ifru.ifru_data = self.buffer.as_mut_ptr().cast();
        // SAFETY: request is a valid ifreq whose data points at the guarded buffer, which
        // outlives the call; whatever the kernel writes past the buffer's usable bytes
        // lands in the guard page and fails the call instead of overwriting memory.
        let rc = unsafe { libc::ioctl(self.socket.as_raw_fd(), SIOCETHTOOL as _, &mut request) };
        if rc < 0 {
            return Err(io::Error::last_os_error().into());
        }
        Ok(())
    }
}

/// Anonymous memory whose usable bytes are followed by one page that cannot be touched.
struct GuardedBuffer {
    base: *mut u8,
    usable: usize,
    page: usize,
}

// SAFETY: the mapping is owned by this value alone; nothing else holds the pointer.
unsafe impl Send for GuardedBuffer {}

impl GuardedBuffer {
    fn new(bytes: usize) -> io::Result<Self> {
        // SAFETY: sysconf has no memory preconditions.
        let page = match unsafe { libc::sysconf(libc::_SC_PAGESIZE) } {
            size if size > 0 => size as usize,
            _ => 4096,
        };
        let usable = bytes.max(1).div_ceil(page) * page;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                usable + page,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let buffer = Self {
            base: base.cast(),
            usable,
            page,
        };
        // SAFETY: the last page lies inside the mapping made above.
        if unsafe { libc::mprotect(base.cast::<u8>().add(usable).cast(), page, libc::PROT_NONE) }
            != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(buffer)
    }

    /// The first `length` bytes, zeroed, growing the buffer when it is smaller.
    fn prepare(&mut self, length: usize) -> io::Result<&mut [u8]> {
        if length > self.usable {
            *self = Self::new(length)?;
        }
        // SAFETY: length <= usable, all of it mapped readable and writable; &mut self
        // guarantees no other reference into the mapping.
        let bytes = unsafe { std::slice::from_raw_parts_mut(self.base, length) };
        bytes.fill(0);
        Ok(bytes)
    }

    fn bytes(&self, length: usize) -> &[u8] {
        // SAFETY: as in prepare; the kernel's writes ended when the ioctl returned.
        unsafe { std::slice::from_raw_parts(self.base, length.min(self.usable)) }
    }

    fn as_mut_ptr(&mut self) -> *mut u8 {
        self.base
    }
}

impl Drop for GuardedBuffer {
    fn drop(&mut self) {
        // SAFETY: base and the length are the mapping made in new, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.usable + self.page) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_endian = "little")]
    fn set_info_replies() {
        #[rustfmt::skip]
        let reply = [
            // cmd 0x37, reserved, sset_mask with bit 1 (ETH_SS_STATS), data[0] = 9
            0x37, 0, 0, 0,  0, 0, 0, 0,  2, 0, 0, 0, 0, 0, 0, 0,  9, 0, 0, 0,
        ];
        assert_eq!(parse_set_info(&reply), Ok(Some(9)));
        let mut none = reply;
        none[8] = 0;
        assert_eq!(parse_set_info(&none), Ok(None));
        let mut zero = reply;
        zero[16] = 0;
        assert_eq!(parse_set_info(&zero), Ok(None));
        assert!(parse_set_info(&reply[..19]).is_err());
    }

    #[test]
    #[cfg(target_endian = "little")]
    fn names_and_values_replies() {
        let mut reply = vec![0x1b, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0];
        let mut name = |text: &[u8]| {
            let mut raw = [0u8; ETH_GSTRING_LEN];
            raw[..text.len()].copy_from_slice(text);
            reply.extend_from_slice(&raw);
        };
        name(b"peer_ifindex");
        name(b"rx_queue_0_drops");
        let mut names = vec!["stale".to_owned()];
        assert_eq!(parse_names(&reply, 10, &mut names), Ok(2));
        assert_eq!(names, ["peer_ifindex", "rx_queue_0_drops"]);
        assert_eq!(parse_names(&reply, 1, &mut names), Ok(2));
        assert_eq!(names, ["peer_ifindex"]);
        // The count says two names, the bytes hold one and a half.
        assert!(parse_names(&reply[..12 + 48], 10, &mut names).is_err());
        assert!(parse_names(&reply[..11], 10, &mut names).is_err());

        #[rustfmt::skip]
        let values = [
            // cmd 0x1d, n_stats 2, then 5 and 2^40
            0x1d, 0, 0, 0,  2, 0, 0, 0,
            5, 0, 0, 0, 0, 0, 0, 0,
            0, 0, 0, 0, 0, 1, 0, 0,
        ];
        let mut out = Vec::new();
        assert_eq!(parse_values(&values, 10, &mut out), Ok(2));
        assert_eq!(out, [5, 1 << 40]);
        assert!(parse_values(&values[..20], 10, &mut out).is_err());
        for end in 0..values.len() {
            let _ = parse_values(&values[..end], 10, &mut out);
        }
    }

    #[test]
    fn the_guard_page_stops_a_kernel_write_past_the_buffer() {
        let mut buffer = GuardedBuffer::new(100).unwrap();
        let usable = buffer.usable;
        assert!(usable >= 100);
        assert_eq!(buffer.prepare(usable).unwrap().len(), usable);
        // The kernel writing one byte past the usable bytes: read(2) into the guard page
        // fails with EFAULT instead of writing.
        let mut pipe = [0; 2];
        // SAFETY: pipe writes two descriptors into the array.
        assert_eq!(unsafe { libc::pipe(pipe.as_mut_ptr()) }, 0);
        // SAFETY: writes 8 bytes from a live array to the pipe's write end.
        unsafe { libc::write(pipe[1], [7u8; 8].as_ptr().cast(), 8) };
        // SAFETY: the destination starts 4 bytes before the guard page; the kernel
        // checks the whole range and refuses the part that is not writable.
        let read = unsafe { libc::read(pipe[0], buffer.base.add(usable - 4).cast(), 8) };
        let error = io::Error::last_os_error();
        // SAFETY: both descriptors came from pipe above.
        unsafe {
            libc::close(pipe[0]);
            libc::close(pipe[1]);
        }
        // Either nothing was copied (EFAULT) or only the 4 writable bytes were.
        assert!(
            read == -1 && error.raw_os_error() == Some(libc::EFAULT) || read == 4,
            "read {read}: {error}"
        );
    }
}
