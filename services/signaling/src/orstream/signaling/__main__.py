from orstream.common.runner import run
from orstream.signaling.service import SignalingService
from orstream.signaling.settings import SignalingSettings


def main() -> None:
    settings = SignalingSettings()
    run(SignalingService(settings), settings)


if __name__ == "__main__":
    main()
