//! A valid component of a world that is not Veil's: the host must refuse it
//! with a clear reason.

wit_bindgen::generate!({
    inline: "package test:other@0.1.0; world other { export run: func() -> u32; }",
    world: "other",
});

struct Other;

impl Guest for Other {
    fn run() -> u32 {
        42
    }
}

export!(Other);
