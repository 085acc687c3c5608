"""Entry point for SGLang's plugin group ``sglang.srt.plugins`` (placeholder until hooks land)."""


def load() -> None:
    return None
