"""The token the service presents to OpenBao, read once at start."""

from pydantic import SecretStr

from service.config import ConfigurationError, Settings


def read_token(settings: Settings) -> SecretStr:
    """OPENBAO_TOKEN_FILE's token (surrounding whitespace dropped), else OPENBAO_TOKEN."""
    if settings.openbao_token_file is None:
        assert settings.openbao_token is not None  # Settings requires one of the two
        return settings.openbao_token
    try:
        token = settings.openbao_token_file.read_text().strip()
    except (OSError, UnicodeDecodeError) as error:
        message = f"configuration error: OPENBAO_TOKEN_FILE: cannot be read ({error})"
        raise ConfigurationError(message) from None
    if not token:
        message = f"configuration error: OPENBAO_TOKEN_FILE: {settings.openbao_token_file} is empty"
        raise ConfigurationError(message)
    return SecretStr(token)
