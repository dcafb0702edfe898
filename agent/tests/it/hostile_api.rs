//! Hostile clients of the agent API, on loopback only, bounded in count
//! and time: database work that floods or is abandoned, answers that would
//! be huge or read slowly, slow headers, idle and too many connections, and
//! oversized bodies over HTTP/1.1 and HTTP/2. Each test says which limit it
//! checks; throughout, `/healthz` answers within a second and the agent's
//! peak RSS (`VmHWM`) stays under [`RSS_BOUND_KB`].

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    os::fd::FromRawFd,
    time::{Duration, Instant},
};

use anyhow::{Context, bail, ensure};

use crate::common::{Daemon, sample};

/// The peak RSS the agent may reach under these attacks (the issue's
/// example bound).
const RSS_BOUND_KB: u64 = 512 * 1024;
/// A statement that runs until it is interrupted.
const ENDLESS_SQL: &str =
    "WITH RECURSIVE x(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM x) SELECT count(*) FROM x";

/// `ingero serve` over a sample database, plain HTTP on loopback.
fn serve(dir: &std::path::Path, extra: &[&str]) -> anyhow::Result<(Daemon, SocketAddr)> {
    let db = sample(dir, 3)?;
    let mut args = vec!["--listen", "127.0.0.1:0", "--no-tls"];
    args.extend_from_slice(extra);
    let mut daemon = Daemon::serve(&db, &args)?;
    let addr = daemon.api_addr()?.parse()?;
    Ok((daemon, addr))
}

/// The agent's peak resident set, in KiB.
fn peak_rss_kb(daemon: &Daemon) -> anyhow::Result<u64> {
    let pid = daemon.ready["pid"].as_u64().context("no pid in the ready file")?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM")
}

/// A TCP connection to `to` from the loopback address `from` (so the
/// health checks, from another address, are not counted with an attack).
fn connect_from(from: [u8; 4], to: SocketAddr) -> anyhow::Result<TcpStream> {
    let SocketAddr::V4(to) = to else {
        bail!("IPv4 only")
    };
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket owned by the TcpStream made from it; the
    // addresses are valid sockaddr_in values of the given length.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        ensure!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        ensure!(
            libc::bind(fd, (&raw const local).cast(), len) == 0,
            "bind: {}",
            std::io::Error::last_os_error()
        );
        let remote = sockaddr(to.ip().octets(), to.port());
        ensure!(
            libc::connect(fd, (&raw const remote).cast(), len) == 0,
            "connect: {}",
            std::io::Error::last_os_error()
        );
        Ok(stream)
    }
}

/// One request on a fresh connection from 127.0.0.9; status and body.
fn request(addr: SocketAddr, head: &str, body: &[u8], timeout: Duration) -> anyhow::Result<(u16, String)> {
    request_from([127, 0, 0, 9], addr, head, body, timeout)
}

/// One request on a fresh connection from `from`; status and body.
fn request_from(
    from: [u8; 4],
    addr: SocketAddr,
    head: &str,
    body: &[u8],
    timeout: Duration,
) -> anyhow::Result<(u16, String)> {
    let mut s = connect_from(from, addr)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(
        format!(
            "{head}\r\nhost: x\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    s.write_all(body)?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no status in {text:.200}"))?;
    Ok((status, text))
}

/// `/healthz` answers within a second.
fn healthy(addr: SocketAddr) -> anyhow::Result<()> {
    let started = Instant::now();
    let (status, _) = request(addr, "GET /healthz HTTP/1.1", b"", Duration::from_secs(1))?;
    ensure!(
        status == 200 && started.elapsed() < Duration::from_secs(1),
        "healthz: {status} after {:?}",
        started.elapsed()
    );
    Ok(())
}

/// Waits (checking health) until `check` holds, within `timeout`.
fn wait_until(
    addr: SocketAddr,
    timeout: Duration,
    mut check: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Duration> {
    let started = Instant::now();
    while started.elapsed() < timeout {
        healthy(addr)?;
        if check()? {
            return Ok(started.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("not within {timeout:?}")
}

/// Starts a query that never ends on its own, from 127.0.0.2; the
/// connection is returned so the test can abandon it.
fn endless_query(addr: SocketAddr) -> anyhow::Result<TcpStream> {
    let mut s = connect_from([127, 0, 0, 2], addr)?;
    let body = serde_json::json!({ "sql": ENDLESS_SQL, "timeout_ms": 60_000 }).to_string();
    s.write_all(
        format!(
            "POST /api/v1/query HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    )?;
    Ok(s)
}

/// Item 2: `/overview` shares the `--max-queries` budget with queries (429
/// with retry-after past it); a query whose client leaves stops and frees
/// its slot at once (not at its 30 s deadline); a flood of overviews is
/// answered 200 or 429 and nothing else; stopping does not wait for
/// running statements.
#[test]
fn database_work_shares_one_budget_and_stops_when_abandoned() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let (daemon, addr) = serve(dir.path(), &["--max-queries", "2", "--query-timeout", "30s"])?;
    let overview = || request(addr, "GET /api/v1/overview HTTP/1.1", b"", Duration::from_secs(5));
    let busy = [endless_query(addr)?, endless_query(addr)?];
    let took = wait_until(addr, Duration::from_secs(5), || {
        let (status, text) = overview()?;
        Ok(status == 429 && text.to_ascii_lowercase().contains("retry-after: 1"))
    })?;
    eprintln!("overview refused with 429 after {took:?} while 2 queries run");
    drop(busy);
    let freed = wait_until(addr, Duration::from_secs(5), || Ok(overview()?.0 == 200))?;
    eprintln!("slots freed {freed:?} after the clients left");

    // 200 overviews at once (cached for a moment, else 429).
    let started = Instant::now();
    let handles: Vec<_> = (0..200u8)
        .map(|i: u8| {
            std::thread::spawn(move || {
                request_from(
                    [127, 0, 1, i],
                    addr,
                    "GET /api/v1/overview HTTP/1.1",
                    b"",
                    Duration::from_secs(10),
                )
                .map(|r| r.0)
                .with_context(|| format!("client 127.0.1.{i}"))
            })
        })
        .collect();
    for h in handles {
        let status = h
            .join()
            .map_err(|_| anyhow::anyhow!("thread"))?
            .context("flood")?;
        ensure!(status == 200 || status == 429, "overview flood: {status}");
    }
    ensure!(
        started.elapsed() < Duration::from_secs(10),
        "the flood took {:?}",
        started.elapsed()
    );
    healthy(addr)?;

    let _running = [endless_query(addr)?, endless_query(addr)?];
    std::thread::sleep(Duration::from_millis(2100)); // the cached overview expires
    wait_until(addr, Duration::from_secs(5), || Ok(overview()?.0 == 429))?;
    let rss = peak_rss_kb(&daemon)?;
    ensure!(rss < RSS_BOUND_KB, "peak RSS {rss} KiB");
    let started = Instant::now();
    daemon.stop()?;
    ensure!(
        started.elapsed() < Duration::from_secs(5),
        "stopping took {:?}",
        started.elapsed()
    );
    Ok(())
}
