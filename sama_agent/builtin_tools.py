"""Built-in LangChain tools that take mask handles, registered through the same
`register_tools` hook a third-party plugin uses."""
from .hookspecs import hookimpl


@hookimpl
def register_tools(register):
    from .tools import mask_export_tool, mask_info_tool, mask_to_region_tool

    register(mask_info_tool)
    register(mask_export_tool)
    register(mask_to_region_tool)
