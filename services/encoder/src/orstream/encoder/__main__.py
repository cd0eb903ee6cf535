from orstream.common.runner import run
from orstream.encoder.service import EncoderService
from orstream.encoder.settings import EncoderSettings


def main() -> None:
    settings = EncoderSettings()
    run(EncoderService(settings), settings)


if __name__ == "__main__":
    main()
