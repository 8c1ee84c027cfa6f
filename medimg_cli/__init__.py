"""medimg: PACS query/retrieve and EHR lookup from one terminal."""

__version__ = "0.1.0"
