//! Starting and stopping the gateway: bind listeners, serve, wait for a signal, drain.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admin::{self, AdminState};
use crate::auth::Verifier;
use crate::config::{Config, StoreBackend};
use crate::events::{self, Events};
use crate::proxy::Proxy;
use crate::server::{self, ConnOptions};
use crate::status::{Health, Status};
use crate::store::{self, Store};
use crate::telemetry;
use crate::tls::ServerTls;
use crate::usage;
use crate::workers::{self, ProxyWorkers, WorkerSettings};

/// The status listener keeps answering (`/readyz` 503) while the proxy drains; it gets this
/// long of its own to finish once the proxy is done.
const STATUS_GRACE: Duration = Duration::from_secs(1);
const STORE_PING_INTERVAL: Duration = Duration::from_secs(1);
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Runs the gateway until SIGTERM/SIGINT, then drains and returns. SIGHUP reloads the
/// config file at `path`.
pub async fn run(config: Config, path: PathBuf) -> Result<(), String> {
    let metrics = telemetry::install_metrics()?;
    let health = Arc::new(Health::default());
    let tunnels = TaskTracker::new();

    let store = store::open(&config.store)
        .await
        .map_err(|e| format!("cannot open the {:?} store: {e}", config.store.backend))?;
    let verifier = Arc::new(Verifier::new(store.clone(), &config.cache));
    let proxy = Arc::new(
        Proxy::new(&config, verifier.clone(), tunnels.clone()).map_err(|e| e.to_string())?,
    );

    // Background work stopped after the listeners drain: events, usage, store watch.
    let stop_background = CancellationToken::new();
    let mut background = Vec::new();
    let events = match config.store.backend {
        StoreBackend::Embedded => Events::in_process(verifier.clone()),
        StoreBackend::Redis => {
            let target = config.store.redis_target();
            let channel = events::channel_for(&config.store.redis_key_prefix);
            background.push(tokio::spawn(events::run_subscriber(
                target.clone(),
                channel.clone(),
                verifier.clone(),
                stop_background.clone(),
            )));
            Events::redis(verifier.clone(), &target, channel).map_err(|e| e.to_string())?
        }
    };
    if config.admin.token.is_none() {
        tracing::warn!(
            variable = %config.admin.token_env,
            "no bootstrap admin token set; only keys with keygate:admin can use the admin API"
        );
    }
    let admin_router = admin::router(Arc::new(AdminState::new(
        &config,
        store.clone(),
        verifier.clone(),
        Arc::new(events),
    )));
    let server_tls = config
        .proxy
        .tls
        .as_ref()
        .map(ServerTls::load)
        .transpose()
        .map_err(|e| e.to_string())?;
    let proxy_options = ConnOptions {
        header_read_timeout: config.proxy.header_read_timeout,
        max_header_bytes: config.proxy.max_header_bytes,
        max_headers: config.proxy.max_headers,
        tls: server_tls.as_ref().map(|t| t.acceptor.clone()),
    };
    // Before any listener is bound (tests and supervisors signal once they see "listening"):
    // until a handler is installed, SIGHUP and SIGTERM kill the process on the spot.
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .map_err(|e| format!("cannot listen for SIGHUP: {e}"))?;
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    let proxy_listeners = workers::bind_shared(config.proxy.listen, config.proxy.workers)
        .map_err(|e| e.to_string())?;
    let admin_listener = server::bind("admin", config.admin.listen)
        .await
        .map_err(|e| e.to_string())?;
    let status_listener = server::bind("status", config.status.listen)
        .await
        .map_err(|e| e.to_string())?;

    let draining = CancellationToken::new();
    let stop_proxy = CancellationToken::new();
    let stop_status = CancellationToken::new();
    let grace = config.shutdown.grace;
    let mut proxy_workers = ProxyWorkers::start(
        proxy_listeners,
        proxy.clone(),
        WorkerSettings {
            options: proxy_options,
            draining: draining.clone(),
            stop: stop_proxy.clone(),
            grace,
            cpu_affinity: config.proxy.cpu_affinity,
        },
    )
    .map_err(|e| format!("cannot start the proxy workers: {e}"))?;
    let admin_task = tokio::spawn(server::serve(
        "admin",
        admin_listener,
        ConnOptions::internal(),
        admin::handler(admin_router),
        draining.clone(),
        stop_proxy.clone(),
        grace,
    ));
    let status = Arc::new(Status {
        health: health.clone(),
        metrics: metrics.clone(),
    });
    let status_task = tokio::spawn(server::serve(
        "status",
        status_listener,
        ConnOptions::internal(),
        move |req, _conn| status.clone().handle(req),
        draining.clone(),
        stop_status.clone(),
        STATUS_GRACE,
    ));

    background.push(tokio::spawn(usage::run_flusher(
        verifier.clone(),
        store.clone(),
        stop_background.clone(),
    )));
    background.push(tokio::spawn(watch_store(
        store,
        health.clone(),
        stop_background.clone(),
    )));

    background.push(tokio::spawn(sweep(
        proxy.clone(),
        verifier.clone(),
        metrics,
        stop_background.clone(),
    )));

    let mut config = config;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = hangup.recv() => {
                if let Some(applied) = reload(&path, &config, &proxy, &verifier, server_tls.as_ref()) {
                    config = applied;
                }
            }
        }
    }
    let deadline = Instant::now() + config.shutdown.delay + grace;
    health.start_draining();
    draining.cancel();
    tracing::info!(delay = ?config.shutdown.delay, ?grace, "shutting down: readiness off, draining");
    tokio::time::sleep(config.shutdown.delay).await;

    stop_proxy.cancel();
    let ((), _) = tokio::join!(proxy_workers.served(), admin_task);
    tunnels.close();
    if tokio::time::timeout_at(deadline, tunnels.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = tunnels.len(),
            "grace period over; closing open tunnels"
        );
    }
    proxy_workers.finish().await;
    // Last: the usage flusher writes what the drained requests recorded.
    stop_background.cancel();
    for task in background {
        let _ = task.await;
    }
    stop_status.cancel();
    let _ = status_task.await;
    tracing::info!("stopped");
    Ok(())
}

/// SIGHUP: re-reads the config file and applies what can change while running — routes,
/// key headers, identity prefix, upstream and cache settings, the access log switch, TLS
/// certificate files. Settings that need a restart are reported and kept. A file that fails
/// to load or validate changes nothing. Returns the config now in force.
fn reload(
    path: &Path,
    running: &Config,
    proxy: &Proxy,
    verifier: &Verifier,
    tls: Option<&ServerTls>,
) -> Option<Config> {
    let mut next = match Config::load(path) {
        Ok(next) => next,
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; the running config stays in force");
            return None;
        }
    };
    for setting in keep_restart_only(&mut next, running) {
        tracing::warn!(
            setting,
            "changed in the file, but takes a restart; keeping the running value"
        );
    }
    // Build everything first so a failure (an unreadable certificate, say) applies nothing.
    let proxy_state = match proxy.prepare(&next) {
        Ok(state) => state,
        Err(e) => {
            tracing::error!(error = %e, "config reload refused; the running config stays in force");
            return None;
        }
    };
    let certificate = match (tls, &next.proxy.tls) {
        (Some(tls), Some(files)) => match tls.prepare(files) {
            Ok(pair) => Some((tls, pair)),
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config stays in force");
                return None;
            }
        },
        _ => None,
    };
    proxy.commit(proxy_state);
    if let Some((tls, pair)) = certificate {
        tls.commit(pair);
    }
    verifier.reconfigure(&next.cache);
    tracing::info!(routes = next.routes.len(), "config reloaded");
    Some(next)
}

/// Puts back the running value of every setting that cannot change without a restart and
/// names those that the new file tried to change.
fn keep_restart_only(next: &mut Config, running: &Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:ident).+) => {
            if next.$($field).+ != running.$($field).+ {
                kept.push($name);
                next.$($field).+ = running.$($field).+.clone();
            }
        };
    }
    keep!("proxy.listen", proxy.listen);
    keep!("proxy.header_read_timeout", proxy.header_read_timeout);
    keep!("proxy.max_header_bytes", proxy.max_header_bytes);
    keep!("proxy.max_headers", proxy.max_headers);
    keep!("proxy.workers", proxy.workers);
    keep!("proxy.cpu_affinity", proxy.cpu_affinity);
    // Certificate files reload; turning TLS on or off changes the listener.
    if next.proxy.tls.is_some() != running.proxy.tls.is_some() {
        kept.push("proxy.tls");
        next.proxy.tls = running.proxy.tls.clone();
    }
    keep!("admin", admin);
    keep!("status", status);
    keep!("store", store);
    // The admin API issues keys with these; the proxy must keep accepting what it issues.
    keep!("keys.prefix", keys.prefix);
    keep!("keys.default_ttl", keys.default_ttl);
    keep!("keys.allow_never_expires", keys.allow_never_expires);
    keep!("shutdown", shutdown);
    keep!("log.format", log.format);
    keep!("log.level", log.level);
    kept
}

/// Drops rate-limit buckets that have refilled, so the table holds only clients near a
/// limit, and cached keys past their lifetime, so their memory is reused. Also folds the
/// latency histograms' samples into their buckets: the recorder keeps every sample (about
/// 33 bytes per request, `benches/hot_path.rs`) until that happens; a `/metrics` scrape
/// does it too, but without one the memory grew with every request served.
async fn sweep(
    proxy: Arc<Proxy>,
    verifier: Arc<Verifier>,
    metrics: PrometheusHandle,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(SWEEP_INTERVAL) => {
                proxy.limits().sweep();
                verifier.sweep();
                metrics.run_upkeep();
            }
            () = stop.cancelled() => return,
        }
    }
}

/// Pings the store every second: the first answer makes `/readyz` ready (listeners are
/// bound by then), and later pings keep `keygate_store_up` current during quiet periods.
/// An outage after that does not make the gateway unready: cached keys keep working.
async fn watch_store(store: Arc<dyn Store>, health: Arc<Health>, stop: CancellationToken) {
    let mut announced = false;
    let mut last_ok = true;
    loop {
        let result = store.ping().await;
        match (&result, announced) {
            (Ok(()), false) => {
                health.set_ready();
                announced = true;
                tracing::info!(store = store.backend(), "store answered; keygate ready");
            }
            (Err(e), _) if last_ok => {
                tracing::warn!(store = store.backend(), error = %e, "store unreachable")
            }
            (Ok(()), true) if !last_ok => {
                tracing::info!(store = store.backend(), "store reachable again")
            }
            _ => {}
        }
        last_ok = result.is_ok();
        tokio::select! {
            () = tokio::time::sleep(STORE_PING_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Resolves on SIGTERM (Kubernetes, systemd) or SIGINT (Ctrl-C). The handlers are installed
/// when this is called, not when it is first polled, so a signal in between is not lost.
pub fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let interrupt = signal(SignalKind::interrupt());
    async move {
        match (term, interrupt) {
            (Ok(mut term), Ok(mut interrupt)) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = interrupt.recv() => {}
                }
            }
            (term, interrupt) => {
                tracing::error!(
                    sigterm = term.is_ok(),
                    sigint = interrupt.is_ok(),
                    "cannot install a handler for every shutdown signal"
                );
                if let Ok(mut s) = term.or(interrupt) {
                    s.recv().await;
                } else {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
