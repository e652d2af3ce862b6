use clap::Parser;

fn main() {
    // Parsing starts no thread, so `bench --threads` can still size the pools that
    // tune_runtime starts.
    let cli = match clipsteer_cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // clap's message, its usage block and its hint folded into one line: a bad flag
            // reads like every other error of this program.
            clipsteer::print_err_line(format_args!(
                "{}",
                clipsteer_cli::usage_error_line(&e.render().to_string())
            ));
            std::process::exit(e.exit_code());
        }
    };
    if let Err(e) = cli.set_thread_count() {
        clipsteer::print_err_line(format_args!("error: {}", clipsteer::error_line(&e)));
        std::process::exit(2);
    }
    clipsteer::tune_runtime();
    match clipsteer_cli::run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let error = clipsteer::Error::classify(&e);
            clipsteer::print_err_line(format_args!("error: {}", error.message()));
            std::process::exit(error.exit_code());
        }
    }
}
