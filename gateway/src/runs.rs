//! Runs of bytes of one class (a string's plain bytes, a key's characters),
//! measured a block at a time: the scanners' inner loop over long values.

/// Length of the run of `class` bytes `s` starts with. Whole blocks of 32
/// bytes are tested with a fold the compiler turns into vector compares
/// (for a `class` made of compares), so a long base64, hex or text value
/// costs a few instructions per block, not a branch per byte.
pub fn run_len(s: &[u8], class: impl Fn(u8) -> bool) -> usize {
    let mut n = 0;
    for block in s.chunks_exact(32) {
        if !block.iter().fold(true, |all, b| all & class(*b)) {
            break;
        }
        n += 32;
    }
    n + s[n..].iter().take_while(|b| class(**b)).count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_are_measured_as_byte_by_byte() {
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..2000 {
            let len = (next() % 300) as usize;
            let run = (next() % 120) as usize;
            // A run of common characters, then anything, at any alignment.
            let s: Vec<u8> = (0..len).map(|i| if i < run { b"aZ09+/ "[(next() % 7) as usize] } else { next() as u8 }).collect();
            let classes: [fn(u8) -> bool; 3] = [|b| b.is_ascii_alphanumeric(), |b| b >= 0x20 && b != b'"', |b| b == b'a'];
            for class in classes {
                let want = s.iter().take_while(|b| class(**b)).count();
                assert_eq!(run_len(&s, class), want, "{s:?}");
            }
        }
    }
}
