//! `testnode`: run a simulated IOTA node. `testnode --help` lists the switches; behaviour can also be
//! changed while running with `curl -X POST localhost:14265/control/state -d '{"synced":false}'`.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    version,
    about = "A simulated IOTA node for tests and benchmarks: Hornet/Bee REST (chrysalis, stardust), iota-node \
             JSON-RPC (POST /, /json-rpc, /public; WebSocket /subscribe) and gRPC (/iota.grpc.*, h2c), Wasp EVM \
             JSON-RPC (/v1/chain/evm)"
)]
struct Args {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:14265")]
    listen: SocketAddr,
    /// Name reported in /control/state.
    #[arg(long, default_value = "testnode")]
    name: String,
    /// Start unsynced (confirmed milestone lags the latest).
    #[arg(long)]
    unsynced: bool,
    /// Milliseconds to wait before answering API routes.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Answer API routes with 500 and /health with 503.
    #[arg(long)]
    failing: bool,
    /// Offer remote proof of work.
    #[arg(long)]
    pow: bool,
    /// Leading zero bits remote PoW must find (each bit doubles the work).
    #[arg(long, default_value_t = 16)]
    pow_difficulty: u32,
    /// iota-rebased and EVM: checkpoints (blocks) this node stays behind the others, for lag tests.
    #[arg(long, default_value_t = 0)]
    lagging: u64,
    /// Append each iota_executeTransactionBlock's transaction bytes to this file, a line each.
    #[arg(long)]
    submissions_log: Option<std::path::PathBuf>,
    /// Worker threads (0 = one per core).
    #[arg(long, default_value_t = 0)]
    threads: usize,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if args.threads > 0 {
        rt.worker_threads(args.threads);
    }
    rt.enable_all().build()?.block_on(async {
        let options = testnode::Options {
            name: args.name.clone(),
            synced: !args.unsynced,
            delay: Duration::from_millis(args.delay_ms),
            failing: args.failing,
            pow: args.pow,
            pow_difficulty: args.pow_difficulty,
            submissions_log: args.submissions_log.clone(),
        };
        let node = testnode::TestNode::start(args.listen, options).await?;
        node.state().checkpoint_lag.store(args.lagging, std::sync::atomic::Ordering::Relaxed);
        println!("testnode {} listening on {}", args.name, node.url());
        tokio::signal::ctrl_c().await?;
        node.kill().await;
        Ok(())
    })
}
