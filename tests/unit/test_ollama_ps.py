"""``ollama ps`` as Ollama's releases print it (tests/fixtures/ollama/SOURCES.md): what is
loaded, and how much of it sits on the GPU."""

from pathlib import Path

import pytest

from gpufleet.facts.ollama import OllamaLoaded, gpu_percent, parse_ollama_ps

FIXTURES = Path(__file__).parents[1] / "fixtures" / "ollama"


def lines(name: str) -> list[str]:
    return (FIXTURES / name).read_text().splitlines()


def test_a_recent_release_with_a_context_column_and_a_cpu_gpu_split():
    assert parse_ollama_ps(lines("ollama-ps-context-split.txt")) == [
        {
            "name": "llama4:16x17b",
            "size": "159 GB",
            "gpu_percent": 48,
            "context": 128000,
            "until": "Forever",
        }
    ]


def test_an_older_release_without_context_padded_with_tabs():
    assert parse_ollama_ps(lines("ollama-ps-faq-tabs.txt")) == [
        {
            "name": "llama3:70b",
            "size": "42 GB",
            "gpu_percent": 100,
            "context": None,
            "until": "4 minutes from now",
        }
    ]


def test_an_older_release_split_and_whole_on_the_gpu():
    text = (FIXTURES / "ollama-ps-before-context.txt").read_text()
    partial, whole = (parse_ollama_ps(block.splitlines()) for block in text.split("\n\n"))
    assert [(m["name"], m["size"], m["gpu_percent"]) for m in partial] == [
        ("llama3:70b", "41 GB", 58)
    ]
    assert partial[0]["until"] == "4 minutes from now"  # not swallowed by a context column
    assert [(m["name"], m["gpu_percent"], m["context"]) for m in whole] == [
        ("llama3:latest", 100, None)
    ]


@pytest.mark.parametrize(
    "processor, share",
    [("100% GPU", 100), ("100% CPU", 0), ("48%/52% CPU/GPU", 52), ("Stopping...", None)],
)
def test_gpu_share_of_each_processor_form(processor, share):
    assert gpu_percent(processor) == share


def test_nothing_loaded_and_ollama_absent_read_as_empty():
    header = lines("ollama-ps-context-split.txt")[:1]
    assert parse_ollama_ps(header) == []
    assert parse_ollama_ps([]) == []  # not installed: the command prints nothing
    assert parse_ollama_ps(["Error: could not connect to ollama app, is it running?"]) == []
    assert OllamaLoaded().process([]) == []


def test_the_command_reaches_the_hosts_server_and_tolerates_no_binary():
    command = OllamaLoaded().command(address="10.0.0.5:11500")
    assert "OLLAMA_HOST=10.0.0.5:11500 ollama ps" in command
    assert "command -v ollama >/dev/null 2>&1 || exit 0" in command
    assert "OLLAMA_HOST='a b;x' " in OllamaLoaded().command(address="a b;x")
