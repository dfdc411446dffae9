//! rampart-sidecar: cluster-wide counters for the Rampart filter.

mod bounded;
mod cli;
mod engine;
mod http;
mod keys;
mod metrics;
mod store;

use std::sync::Arc;

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

use crate::cli::{Args, StoreChoice};
use crate::store::memory::MemoryStore;
use crate::store::redis::RedisStore;
use crate::store::Store;

fn main() {
    // Timestamped lines on stderr; RUST_LOG=debug (or warn, ...) changes the level.
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("keys") {
        std::process::exit(keys::main(&argv[1..]));
    }
    let args = match cli::parse(argv.into_iter()) {
        Ok(cli::Parsed::Run(a)) => a,
        Ok(cli::Parsed::Help) => {
            print!("{}", cli::HELP);
            return;
        }
        Err(e) => {
            eprintln!("rampart-sidecar: {e}\n(see rampart-sidecar --help)");
            std::process::exit(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
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

async fn serve(args: Args) -> Result<(), String> {
    let store = match &args.store {
        StoreChoice::Memory => Store::Memory(Box::new(MemoryStore::new(args.max_keys))),
        StoreChoice::Redis(url) => Store::Redis(
            RedisStore::connect_single(url, args.redis_timeout)
                .await
                .map_err(|e| format!("redis {url}: {e}"))?,
        ),
        StoreChoice::Cluster(urls) => Store::Redis(
            RedisStore::connect_cluster(urls, args.redis_timeout)
                .await
                .map_err(|e| format!("redis cluster {}: {e}", urls.join(",")))?,
        ),
    };
    let store = Arc::new(store);
    let engine = engine::Engine::start(Arc::clone(&store));
    let app = Arc::new(http::App {
        engine,
        store: Arc::clone(&store),
        token: args.token.clone(),
        admin_token: args.admin_token.clone(),
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
