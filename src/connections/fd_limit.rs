//! The file-descriptor limit, raised where allowed, and the connection
//! limit it leaves room for.

use std::io;

/// File descriptors kept for everything but client connections: the store's
/// files, the PostgreSQL pool, a backup, the metrics endpoint and its
/// scrapers, the listeners, the runtime's own descriptors.
pub const FD_RESERVE: u64 = 128;

/// Raises the soft limit on open files to the hard limit where allowed, and
/// returns `(soft, hard)` as they are afterwards.
pub fn raise_fd_limit() -> io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit only reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        } else {
            tracing::warn!(
                error = %io::Error::last_os_error(),
                soft = lim.rlim_cur,
                hard = lim.rlim_max,
                "cannot raise the file-descriptor limit"
            );
        }
    }
    Ok((lim.rlim_cur, lim.rlim_max))
}

/// The connection limit for a soft file-descriptor limit: `asked` when
/// given, never above the descriptors left after [`FD_RESERVE`] (or half
/// the limit, when it is small).
pub fn connection_limit(asked: Option<usize>, fd_soft: u64) -> usize {
    // A limit past a million means "unlimited"; the semaphore wants a bound.
    let fd_soft = fd_soft.min(1 << 20);
    let ceiling = usize::try_from(fd_soft - FD_RESERVE.min(fd_soft / 2))
        .unwrap_or(usize::MAX)
        .max(1);
    match asked {
        Some(n) if n > ceiling => {
            tracing::warn!(
                asked = n,
                max_connections = ceiling,
                "--max-connections is above the file-descriptor limit allows; lowered"
            );
            ceiling
        }
        Some(n) => n.max(1),
        None => ceiling,
    }
}
