"""Hub helpers that respect ``HF_ENDPOINT``.

``huggingface_hub.RepoCard.validate`` always posts to ``https://huggingface.co/api/validate-yaml``, even when
``HF_ENDPOINT`` names another Hub (a company mirror, a local endpoint in tests). :func:`validate_card` sends
the same request to the configured endpoint.
"""

from __future__ import annotations

__all__ = ["validate_card"]


def validate_card(card, repo_type: str = "model") -> None:
    """Validate a model card's metadata with the Hub at ``huggingface_hub.constants.ENDPOINT``.

    Raises ValueError with the Hub's message when the card is rejected (HTTP 400), or the Hub's HTTP error.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError
    from huggingface_hub.utils import get_session, hf_raise_for_status

    response = get_session().post(
        f"{constants.ENDPOINT.rstrip('/')}/api/validate-yaml",
        json={"repoType": repo_type, "content": str(card)},
        headers={"Accept": "text/plain"},
    )
    try:
        hf_raise_for_status(response)
    except HfHubHTTPError as exc:
        if response.status_code == 400:
            raise ValueError(f"model card rejected by {constants.ENDPOINT}: {response.text}") from exc
        raise
