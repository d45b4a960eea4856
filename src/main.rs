use clap::Parser;

fn main() {
    let cli = nubo::Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("NUBO_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Runtime::new().expect("starting the tokio runtime");
    let code = rt.block_on(nubo::run(cli));
    std::process::exit(code);
}
