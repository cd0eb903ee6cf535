from orstream.common.runner import run
from orstream.metadata.service import MetadataService
from orstream.metadata.settings import MetadataSettings


def main() -> None:
    settings = MetadataSettings()
    run(MetadataService(settings), settings)


if __name__ == "__main__":
    main()
