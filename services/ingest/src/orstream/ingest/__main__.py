from orstream.common.runner import run
from orstream.ingest.service import IngestService
from orstream.ingest.settings import IngestSettings


def main() -> None:
    settings = IngestSettings()
    run(IngestService(settings), settings)


if __name__ == "__main__":
    main()
