from orstream.common.runner import run
from orstream.viewer.service import ViewerService
from orstream.viewer.settings import ViewerSettings


def main() -> None:
    settings = ViewerSettings()
    run(ViewerService(settings), settings)


if __name__ == "__main__":
    main()
