use clap::Parser;

fn main() {
    cairn::lock::mark_process_start();
    let cli = cairn::cli::Cli::parse();
    cairn::logging::init(cli.global.verbose, cli.global.quiet, cli.global.log_format);
    cairn::interrupt::install();
    if let Err(e) = cairn::commands::run(&cli.global, cli.command) {
        eprintln!("error: {e}");
        if let Some(h) = e.hint() {
            eprintln!("hint: {h}");
        }
        std::process::exit(e.kind().exit_code());
    }
}
