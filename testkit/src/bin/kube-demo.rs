//! `kube-demo` (`scripts/kube-demo.sh` runs it): the seed, as written, through `kubectl` against a
//! real kube-apiserver and etcd, with the gateway reading it as its ServiceAccount
//! ([`testkit::kube_demo`] says every step and what is done by hand for want of a kubelet).
//!
//! Prints each step, the seed's two requests and their answers, and
//! the statuses (`kubectl get inferencepool,...,gateway -o yaml`); then keeps everything running until
//! Ctrl-C (or exits at once with `--exit`). Every server stops on exit, on error and on Ctrl-C.

use std::net::SocketAddr;

use anyhow::Context as _;
use clap::Parser;
use testkit::kube_demo::{KubeDemo, KubeDemoPlan, STATUS_COMMAND, summary};

#[derive(Debug, Parser)]
#[command(
    name = "kube-demo",
    about = "The seed's YAML in a real API server, the gateway reading it with --source kube"
)]
struct Args {
    /// Stop after the requests and the statuses instead of running until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Simulator speed-up (1 = the A10 model's real pace).
    #[arg(long, default_value_t = 1.0)]
    time_scale: f64,
    /// The gateway's admin listener.
    #[arg(long, default_value = "127.0.0.1:9090")]
    admin_addr: SocketAddr,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let gateway_binary = std::env::current_exe()?.with_file_name("inference-gateway");
    anyhow::ensure!(
        gateway_binary.exists(),
        "{} is missing: build it first (scripts/kube-demo.sh does)",
        gateway_binary.display()
    );
    let plan = KubeDemoPlan {
        gateway_binary,
        admin: args.admin_addr,
        time_scale: args.time_scale,
    };
    let run = async {
        let mut demo = KubeDemo::start(&plan, |line| println!("{line}"))
            .await
            .map_err(anyhow::Error::msg)?;
        let host = demo
            .gateway_host()
            .await
            .context("the Gateway has no address")?;
        println!(
            "\n$ export GATEWAY_HOST=$(kubectl get gateway/qwen-inference-gateway -o jsonpath='{{.status.addresses[0].value}}')"
        );
        println!("GATEWAY_HOST={host}");
        let answers = demo.seed_requests().await.map_err(anyhow::Error::msg)?;
        for answer in &answers {
            println!("\n$ {}", answer.curl);
            println!("{}", answer.body.trim_end());
            println!("  -> {}", summary(answer));
        }
        println!(
            "\n# A bare `inferencepool` would name the v1 group (inference.networking.k8s.io), which"
        );
        println!("# the seed's v1alpha2 pool is not in; hence the group below.");
        println!("$ {STATUS_COMMAND}");
        println!("{}", demo.statuses_yaml().await.trim_end());
        if let Some(failed) = answers.iter().find(|a| a.status != 200) {
            anyhow::bail!("a seed request failed: {}", summary(failed));
        }
        if args.exit {
            return Ok(());
        }
        println!(
            "\nEverything keeps running until Ctrl-C. With the KUBECONFIG above, try:\n  kubectl get pods -o wide\n  kubectl delete pod qwen-4   # the gateway drops it from the pool\n  kubectl annotate inferencepool.inference.networking.x-k8s.io vllm-qwen-pool inference.networking.x-k8s.io/routing-strategy=PREFIX_CACHE\n  curl -s {}/debug/snapshot",
            plan.admin
        );
        loop {
            demo.check_alive().map_err(anyhow::Error::msg)?;
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        result = run => result,
        _ = tokio::signal::ctrl_c() => {
            println!("stopped.");
            Ok(())
        }
    }
}
