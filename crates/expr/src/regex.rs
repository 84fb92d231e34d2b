//! Checks regular expression literals when a program is compiled, with the engine jaq uses at
//! run time (regex-bites, linear in the input for a given program size), and derives from the
//! compiled size how much a search costs per input byte.

/// Validate `pattern` with `flags` and return the budget charge per input byte.
pub(crate) fn weight(pattern: &str, flags: &str, max_program_bytes: usize) -> Result<u64, String> {
    let mut builder = regex_bites::RegexBuilder::new(pattern);
    for flag in flags.chars() {
        match flag {
            'g' | 'n' => {}
            'i' => {
                builder.case_insensitive(true);
            }
            'm' => {
                builder.multi_line(true);
            }
            's' => {
                builder.dot_matches_new_line(true);
            }
            'l' => {
                builder.swap_greed(true);
            }
            'x' => {
                builder.ignore_whitespace(true);
            }
            'p' => {
                builder.multi_line(true).dot_matches_new_line(true);
            }
            other => {
                return Err(format!(
                    "unknown regex flag {other:?} (expected some of gnimslxp)"
                ))
            }
        }
    }
    builder.nest_limit(32);
    // find the smallest power-of-two size limit the program fits in: that is its size
    let mut limit = 1024usize;
    loop {
        builder.size_limit(limit);
        match builder.build() {
            Ok(_) => return Ok((limit / 256).max(1) as u64),
            Err(e) => {
                let msg = e.to_string();
                let too_big = msg.contains("size limit") || msg.contains("exceeds");
                if !too_big {
                    return Err(format!("invalid regular expression: {msg}"));
                }
                if limit >= max_program_bytes {
                    return Err(format!(
                        "regular expression compiles to more than {max_program_bytes} bytes; \
                         simplify it (large counted repetitions such as a{{1000}} are costly)"
                    ));
                }
                limit *= 2;
            }
        }
    }
}
