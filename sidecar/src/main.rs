//! rampart-sidecar: cluster-wide counters for the Rampart filter.

mod bounded;
mod cli;
mod engine;
mod health;
mod http;
mod keys;
mod metrics;
mod store;

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use clap::Parser;

use crate::cli::{Cli, Command, RunArgs, StoreChoice};
use crate::store::connection::Target;
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;

/// Every hit allocates a few small strings and buffers across threads; glibc's malloc
/// spent a third of the sidecar's time on them (perf, distinct-counter reports).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    if let Some(Command::Keys(keys)) = cli.command {
        std::process::exit(keys::run(keys));
    }
    let args = cli.run;
    // Timestamped lines on stderr; RUST_LOG, when set, overrides --log-level.
    let mut logger = env_logger::Builder::new();
    logger.filter_level(args.log_level);
    // The Redis client warns on every failed call of an outage; the sidecar says what
    // matters once (store unreachable / back, topology changed). RUST_LOG brings it back.
    logger.filter_module("redis", log::LevelFilter::Error);
    if let Ok(filters) = std::env::var("RUST_LOG") {
        logger.parse_filters(&filters);
    }
    logger.init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(usize::from(args.threads))
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rampart-sidecar: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(args)) {
        eprintln!("rampart-sidecar: {e}");
        std::process::exit(1);
    }
}

async fn serve(args: RunArgs) -> Result<(), String> {
    let target = match args.store() {
        StoreChoice::Memory => None,
        StoreChoice::Redis(url) => Some(Target::Single(url)),
        StoreChoice::Cluster(urls) => Some(Target::Cluster(urls)),
        StoreChoice::Sentinel {
            sentinels,
            master,
            password,
        } => Some(Target::Sentinel {
            sentinels,
            master,
            password,
        }),
    };
    let store = match target {
        None => Store::Memory(Box::new(MemoryStore::new(args.max_keys))),
        Some(t) => {
            let what = format!("{t:?}");
            Store::Redis(Box::new(
                RedisStore::connect(t, args.redis_timeout)
                    .await
                    .map_err(|e| format!("{what}: {e}"))?,
            ))
        }
    };
    metrics::METRICS.set_store(store.name());
    let store = Arc::new(store);
    let engine = engine::Engine::start(Arc::clone(&store));
    let app = Arc::new(http::App {
        engine,
        store: Arc::clone(&store),
        token: args.token(),
        admin_token: args.admin_token(),
    });
    let listener = TcpListener::bind(&args.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    // One line tests and operators can wait for.
    println!("rampart-sidecar listening on {local} (store: {})", store.name());
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("rampart-sidecar: accept failed: {e}");
                    continue;
                }
            },
            _ = tokio::signal::ctrl_c() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let service = service_fn(move |req| Arc::clone(&app).handle(req));
            let _ = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
