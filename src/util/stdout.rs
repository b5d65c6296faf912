//! A program's own text on stdout (`-h`, `-version`): written with its errors handled, since
//! `print!` panics on a failed write. A reader that went away (`sigorest -h | head -1`) ends
//! the program quietly; another failure (`> /dev/full`) is one line on stderr and status 1.

use std::io::{ErrorKind, Write};

/// Writes `text` to `out` and flushes it; returns the exit status: 0 when written or when
/// the reader went away, else 1 after one line on `err` that starts with `program`.
pub fn print_text(program: &str, text: &[u8], out: &mut impl Write, err: &mut impl Write) -> u8 {
    match out.write_all(text).and_then(|()| out.flush()) {
        Ok(()) => 0,
        Err(e) if e.kind() == ErrorKind::BrokenPipe => 0,
        Err(e) => {
            // Nothing better to do if stderr fails too.
            let _ = writeln!(err, "{program}: cannot write to stdout: {e}");
            1
        }
    }
}

/// [`print_text`] to the process's stdout and stderr.
pub fn print_to_stdout(program: &str, text: &str) -> u8 {
    print_text(
        program,
        text.as_bytes(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr().lock(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io;

    /// A stdout that fails every write with `kind`.
    struct Failing(ErrorKind);

    impl Write for Failing {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(self.0))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_closed_pipe_ends_quietly_another_failure_is_one_line() {
        let mut err = Vec::new();
        let mut out = Vec::new();
        assert_eq!(print_text("p", b"help\n", &mut out, &mut err), 0);
        assert_eq!((out.as_slice(), err.as_slice()), (&b"help\n"[..], &b""[..]));

        let gone = print_text(
            "p",
            b"help\n",
            &mut Failing(ErrorKind::BrokenPipe),
            &mut err,
        );
        assert_eq!((gone, err.as_slice()), (0, &b""[..]));

        let full = print_text(
            "p",
            b"help\n",
            &mut Failing(ErrorKind::StorageFull),
            &mut err,
        );
        let said = String::from_utf8(err).unwrap();
        assert_eq!(full, 1);
        assert!(said.starts_with("p: cannot write to stdout: "), "{said}");
        assert_eq!(said.lines().count(), 1, "{said}");
    }
}
